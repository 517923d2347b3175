"""The one fake part of a chaos run: a wrapper around the real runtime binary that fails or hangs
one call on demand (real runc cannot be made to fail at a chosen moment).

The daemon is configured with the wrapper as its ``runtime.binary``.  Every
call goes through to the real binary, unless a control file says otherwise:
``hang-<command>`` (holding seconds) makes the next ``<command>`` (create,
start, exec, delete, ...) wait that long first, ``fail-<command>`` makes it
fail (after the wait, if both are armed) with a message on stderr, else it runs.  Each control file is taken by exactly
one call (a rename is atomic), and a hanging call leaves ``hanging-<command>``
while it waits, so a test knows the moment has come.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["RuntimeWrapper"]

_SCRIPT = """#!/bin/sh
# contactor chaos: {real} with failures and hangs on demand (see actors/chaos/runtime_wrapper.py).
ctl='{ctl}'
op=''
log=''
skip=''
for a in "$@"; do
    if [ -n "$skip" ]; then
        if [ "$skip" = --log ]; then log=$a; fi
        skip=''
        continue
    fi
    case "$a" in
        --root|--log|--log-format|--criu|--rootless) skip=$a ;;
        -*) ;;
        *) op=$a; break ;;
    esac
done
if [ -n "$op" ]; then
    if mv "$ctl/hang-$op" "$ctl/.taken.$$" 2>/dev/null; then
        secs=$(cat "$ctl/.taken.$$")
        rm -f "$ctl/.taken.$$"
        : > "$ctl/hanging-$op"
        sleep "$secs"
        rm -f "$ctl/hanging-$op"
    fi
    if mv "$ctl/fail-$op" "$ctl/.taken.$$" 2>/dev/null; then
        rm -f "$ctl/.taken.$$"
        # Where runc puts its errors: stderr, and its --log as a JSON line.
        echo "chaos: injected failure of $op" >&2
        if [ -n "$log" ]; then
            printf '{{"level":"error","msg":"chaos: injected failure of %s"}}\n' "$op" >> "$log"
        fi
        exit 1
    fi
fi
exec '{real}' "$@"
"""


class RuntimeWrapper:
    """The wrapper script and its control dir, both under ``directory``."""

    def __init__(self, directory: Path, real: str = "runc") -> None:
        found = shutil.which(real)
        if found is None:
            raise FileNotFoundError(f"runtime {real!r} not found on PATH")
        self.real = found
        self.control = directory / "runtime-control"
        self.control.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.binary = directory / "runtime-wrapper"
        self.binary.write_text(_SCRIPT.format(real=found, ctl=self.control))
        os.chmod(self.binary, 0o700)

    def fail_next(self, command: str) -> None:
        (self.control / f"fail-{command}").write_text("1\n")

    def hang_next(self, command: str, seconds: float) -> None:
        (self.control / f"hang-{command}").write_text(f"{seconds:.2f}\n")

    def armed(self, command: str) -> bool:
        return any((self.control / f"{kind}-{command}").exists() for kind in ("fail", "hang"))

    def hanging(self, command: str) -> bool:
        return (self.control / f"hanging-{command}").exists()

    def disarm(self) -> None:
        for path in self.control.iterdir():
            if path.name.startswith(("fail-", "hang-")):
                path.unlink(missing_ok=True)
