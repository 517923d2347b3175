"""Restarts owed to tasks whose shim died, kept on disk so that a daemon restart keeps them.

A task whose shim died is cleaned up (its bundle removed) and, if its restart policy says
so, made again from its container record after a back-off.  Between the two it exists
only as this record, ``<state>/.respawn/<namespace>/<id>.json``: written by the TaskActor
before it removes the bundle, removed by the RuntimeActor once the task is made again or
the restart is cancelled (a kill or delete meanwhile).  A new RuntimeActor schedules every
record it finds, at the time it was due (at once if that has passed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from actors.bundle import write_atomic
from actors.identifiers import validate, validate_namespace
from actors.messages import Respawn, Stdio

__all__ = ["save", "remove", "load_all"]


def _path(state: str | Path, ns: str, cid: str) -> Path:
    return Path(state) / ".respawn" / ns / f"{cid}.json"


def save(state: str | Path, ns: str, cid: str, respawn: Respawn) -> None:
    path = _path(state, ns, cid)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "due": time.time() + respawn.delay,
        "delay": respawn.delay,
        "restarts": respawn.restarts,
        "stdio": dataclasses.asdict(respawn.stdio),
        "exit": respawn.exit,
    }
    write_atomic(path, json.dumps(record).encode())


def remove(state: str | Path, ns: str, cid: str) -> None:
    path = _path(state, ns, cid)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only once empty


def load_all(state: str | Path) -> list[tuple[str, str, Respawn]]:
    """Every restart on record, its delay being what is left of it now (never negative)."""
    out: list[tuple[str, str, Respawn]] = []
    top = Path(state) / ".respawn"
    if not top.is_dir():
        return out
    now = time.time()
    for ns_dir in sorted(top.iterdir()):
        for file in sorted(ns_dir.glob("*.json")) if ns_dir.is_dir() else []:
            ns, cid = ns_dir.name, file.name[: -len(".json")]
            try:
                validate_namespace(ns)
                validate(cid, "container id")
                raw: dict[str, Any] = json.loads(file.read_text())
                stdio = Stdio(**{k: raw["stdio"][k] for k in ("stdin", "stdout", "stderr", "terminal")})
                left = max(0.0, float(raw["due"]) - now)
                out.append((ns, cid, Respawn(left, int(raw["restarts"]), stdio, dict(raw["exit"]))))
            except Exception:  # a record that cannot be read is no restart: drop it
                with contextlib.suppress(OSError):
                    os.unlink(file)
    return out
