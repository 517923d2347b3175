"""Restart policies: when an exited task is started again, and after how long.

A container's policy is its label ``contactor.restart``: ``no`` (the
default), ``on-failure[:N]`` (a non-zero exit, at most N times), ``always``,
or ``unless-stopped``.  Exits drive it (the TaskActor asks ``should_restart``
on each exit of the init process).  An explicit kill or delete by a client is
never undone, whatever the policy, so ``unless-stopped`` is the same as
``always`` here (accepted for labels written for docker or containerd).  After
a dead shim the TaskActor hands a ``Respawn`` to the RuntimeActor, which makes
the task again from its container record.  Delays grow exponentially from
``restart.base`` to ``restart.cap`` (configuration; ``BASE`` and ``CAP`` are
their defaults); a task that ran ``restart.reset_after`` seconds counts anew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from actors.errdefs import InvalidArgument

__all__ = ["Policy", "parse", "should_restart", "delay", "LABEL", "BASE", "CAP", "RESET_AFTER"]

LABEL: Final = "contactor.restart"
BASE: Final = 0.2
CAP: Final = 30.0
RESET_AFTER: Final = 10.0


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str  # "no" | "on-failure" | "always" | "unless-stopped"
    max_restarts: int | None = None


def parse(value: str | None) -> Policy:
    if not value or value == "no":
        return Policy("no")
    kind, _, count = value.partition(":")
    if kind == "on-failure":
        if not count:
            return Policy(kind)
        if not count.isdigit() or int(count) < 1:
            raise InvalidArgument(f"restart policy {value!r}: the count must be a positive integer")
        return Policy(kind, int(count))
    if kind in ("always", "unless-stopped") and not count:
        return Policy(kind)
    raise InvalidArgument(
        f"restart policy {value!r} is not one of no, on-failure[:N], always, unless-stopped"
    )


def should_restart(policy: Policy, exit_status: int, restarts: int, stopped_by_client: bool) -> bool:
    if stopped_by_client or policy.kind == "no":
        return False
    if policy.kind == "on-failure":
        return exit_status != 0 and (policy.max_restarts is None or restarts < policy.max_restarts)
    return True  # always, unless-stopped


def delay(restarts: int, base: float = BASE, cap: float = CAP) -> float:
    return float(min(cap, base * (2 ** min(restarts, 30))))
