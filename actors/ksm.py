"""Kernel samepage merging for the processes contactor keeps per container.

Every TaskActor and every shim is a fork of a warm parent, and most of what
each one holds privately is a copy of its parent's pages: CPython writes to an
object whenever it takes or drops a reference, so a page of code, classes or
module dicts that a child merely *used* becomes the child's own copy, most of
the time with the very bytes it had before (the count went up and down again).
Measured on a running TaskActor: of 6.5 MB private, 2.5 MB were byte for byte
the parent's page, 2 MB differed in one or two words.  The kernel's samepage
merging (KSM) folds such identical pages back into one, but only in regions
marked ``MADV_MERGEABLE``.

``mark_mergeable`` marks this process's private writable mappings.  It uses
``madvise``, not ``prctl(PR_SET_MEMORY_MERGE)``: that setting survives exec and
would reach runc and the containers, and pages merged with a container's are
a timing side channel between it and us.  A mark is per mapping, a fork keeps
it and an exec drops it.  Marking costs nothing while ksmd is off
(``/sys/kernel/mm/ksm/run`` is 0): turning it on is the host's choice.

Stdlib only: the shim uses this too.
"""

from __future__ import annotations

import ctypes
from typing import Final

__all__ = ["mark_mergeable", "running", "MADV_MERGEABLE", "KSM_RUN"]

MADV_MERGEABLE: Final = 12
KSM_RUN: Final = "/sys/kernel/mm/ksm/run"
# Kernel mappings that madvise refuses or that are not memory of ours.
_SPECIAL: Final = frozenset({"[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"})


def mark_mergeable(maps: str = "/proc/self/maps") -> int:
    """Mark every private writable mapping of this process mergeable; the bytes marked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(maps) as f:
            lines = f.readlines()
    except OSError:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    marked = 0
    for line in lines:
        fields = line.split()
        perms = fields[1]
        if perms[1] != "w" or perms[3] != "p" or (len(fields) > 5 and fields[5] in _SPECIAL):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, end - start, MADV_MERGEABLE) == 0:
            marked += end - start
    return marked


def running(path: str = KSM_RUN) -> bool:
    """Whether the kernel's ksmd is merging pages (run is 1)."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False
