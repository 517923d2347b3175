"""Fault injection: kill shims, containers, actors and the daemon at any moment, then prove that
nothing was lost or leaked.

``contactor-chaos`` (``scripts/chaos``) runs a bounded workload against a private
daemon while injecting faults, checks the invariants and prints a table.  The
pieces: ``workload`` (the clients), ``faults`` (the injector), ``runtime_wrapper``
(the one fake: a runtime binary that fails or hangs on demand), ``invariants``
(the checks against the real system), ``report`` and ``runner``.
"""

from actors.chaos.faults import FAULT_KINDS
from actors.chaos.runner import Options, run

__all__ = ["FAULT_KINDS", "Options", "run"]
