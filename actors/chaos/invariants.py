"""The invariants a chaos run checks, against the daemon's answers and the real system.

- every task still runs and is manageable, or got exactly one /tasks/delete
  (and, if it was started, exactly one /tasks/exit for its init);
- no exit status is invented: 137 only for a task that was sent SIGKILL or
  whose shim died, a natural exit reported with the status it exited with;
- the event stream holds no duplicate exit for one process;
- nothing is left for a task that no longer exists: no shim (known pid, or any
  process working in its bundle), container process (by cgroup), zombie among
  the children of shims, daemon and this tool, mount, cgroup, bundle, runtime
  state entry, netns or link;
- every container record survives; the daemon answers within its timeout.

Each check returns a list of one-line violations; an empty list is a pass.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from actors.chaos.ledger import Ledger, TaskRecord
from actors.errdefs import ContactorError
from actors.procs import is_alive_process

__all__ = ["check_events", "check_live", "check_leftovers", "check_records", "check_answers", "collect_events"]

HEALTH_TIMEOUT = 10.0
# How long a deleted bundle's tomb may outlive the delete's answer.
TOMB_GRACE = 5.0


def collect_events(daemon: Any, namespace: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every envelope of ``namespace`` in the daemon's log, read back from the start."""
    marker = f"/chaos/marker/{time.monotonic_ns()}"
    with daemon.client() as c:
        c.publish(marker, {"marker": True})
        out: list[dict[str, Any]] = []
        for env in c.events((), since=0, timeout=timeout):
            if env.get("topic") == marker:
                return out
            if env.get("namespace") == namespace:
                out.append(env)
    return out


def check_events(ledger: Ledger, events: list[dict[str, Any]], live: set[str]) -> list[str]:
    problems: list[str] = []
    by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for env in events:
        ev = env.get("event") or {}
        cid = str(ev.get("container_id", ""))
        if cid:
            by_task.setdefault(cid, []).append((str(env.get("topic")), ev))
    exits = Counter(
        (cid, str(ev.get("id")), ev.get("pid"))
        for cid, evs in by_task.items() for topic, ev in evs if topic == "/tasks/exit"
    )  # fmt: skip
    problems += [f"{cid}: {n} /tasks/exit for process {pid} ({eid})" for (cid, eid, pid), n in exits.items() if n > 1]
    for rec in ledger.snapshot():
        problems += _check_task_events(rec, by_task.get(rec.id, []), rec.id in live)
    return problems


def _check_task_events(rec: TaskRecord, evs: list[tuple[str, dict[str, Any]]], live: bool) -> list[str]:
    problems: list[str] = []
    topics = Counter(topic for topic, _ in evs)
    init_exits = [ev for topic, ev in evs if topic == "/tasks/exit" and ev.get("id") == rec.id]
    existed = topics["/tasks/create"] > 0
    if live:
        if topics["/tasks/delete"]:
            problems.append(f"{rec.id}: still listed, yet /tasks/delete was published")
    elif existed and topics["/tasks/delete"] != 1:
        problems.append(f"{rec.id}: gone, with {topics['/tasks/delete']} /tasks/delete (expected 1)")
    if topics["/tasks/delete"] > 1:
        problems.append(f"{rec.id}: {topics['/tasks/delete']} /tasks/delete")
    if not live and topics["/tasks/start"] and len(init_exits) != 1:
        problems.append(f"{rec.id}: started and gone, with {len(init_exits)} init /tasks/exit (expected 1)")
    create_pid = next((ev.get("pid") for topic, ev in evs if topic == "/tasks/create"), None)
    for ev in init_exits:
        status = ev.get("exit_status")
        honest = status == rec.natural_status or (status == 137 and rec.sigkilled)
        if not honest:
            problems.append(f"{rec.id}: init exit status {status} invented (exits with {rec.natural_status} "
                            f"on its own, {'was' if rec.sigkilled else 'never'} sent SIGKILL)")  # fmt: skip
        if create_pid is not None and ev.get("pid") != create_pid:
            problems.append(f"{rec.id}: exit of pid {ev.get('pid')}, but its init was {create_pid}")
    for topic, ev in evs:
        eid = str(ev.get("id", ""))
        if topic != "/tasks/exit" or eid == rec.id or eid not in rec.execs:
            continue
        status = ev.get("exit_status")
        killed = rec.sigkilled or bool(init_exits)  # an exec dies with its container
        if status != rec.execs[eid] and not (status == 137 and killed):
            problems.append(f"{rec.id}: exec {eid} exit status {status} invented (exits with {rec.execs[eid]})")
    return problems


def check_live(daemon: Any, tasks: Iterable[Any]) -> list[str]:
    """Every task the daemon lists answers for itself: state, and its shim lives."""
    problems: list[str] = []
    for t in tasks:
        try:
            with daemon.client() as c:
                st = c.call("tasks.state", timeout=HEALTH_TIMEOUT, id=t.id, exec_id="")
        except ContactorError as exc:
            problems.append(f"{t.id}: listed but not manageable: {exc.category}: {exc.message}")
            continue
        if st.get("status") not in ("created", "running", "paused", "stopped"):
            problems.append(f"{t.id}: listed with status {st.get('status')!r}")
        if not _pid_alive(t.shim_pid):
            problems.append(f"{t.id}: listed but its shim {t.shim_pid} is gone")
    return problems


def check_records(daemon: Any, ledger: Ledger) -> list[str]:
    with daemon.client() as c:
        have = {r["id"] for r in c.list_containers()}
    return [f"{r.id}: container record lost" for r in ledger.snapshot() if r.container_created and r.id not in have]


def check_answers(daemon: Any, roles: frozenset[str]) -> list[str]:
    try:
        with daemon.client() as c:
            h = c.call("health", timeout=HEALTH_TIMEOUT)
    except ContactorError as exc:
        return [f"the daemon did not answer health within {HEALTH_TIMEOUT}s: {exc.message}"]
    missing = roles - set(h.get("ready") or ())
    return [f"the daemon is not ready at the end: {sorted(missing)} missing"] if missing else []


# -- what is left on the system ------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    return pid > 0 and is_alive_process(pid, 0)


def _proc_read(pid: str, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return f.read()
    except OSError:
        return ""


def _stat(pid: str) -> tuple[str, int]:
    raw = _proc_read(pid, "stat")
    if not raw:
        return "", 0
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def daemon_pids(daemon: Any) -> set[int]:
    pids = {os.getpid()}
    if daemon.proc is not None:
        pids.add(daemon.proc.pid)
    pgid = daemon.actor_pgid()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if pgid and os.getpgid(int(pid)) == pgid:
                    pids.add(int(pid))
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((daemon.state / "shim-factory.pid").read_text()))
    return pids


def check_leftovers(daemon: Any, ledger: Ledger, gone: set[str]) -> list[str]:
    """Anything of a task in ``gone`` still on the system; and zombies nobody reaps."""
    ns, state = daemon.namespace, Path(daemon.state)
    problems: list[str] = []
    bundles = state / ns
    for cid in sorted(gone):
        if (bundles / cid).exists():
            problems.append(f"{cid}: bundle left at {bundles / cid}")
    # A deleted bundle is renamed to a hidden tomb and removed just after the delete's answer went out
    # (see TaskCleanup._finish_delete): one still there a few seconds later is left behind.
    deadline = time.monotonic() + TOMB_GRACE
    while True:
        tombs = [p for p in bundles.iterdir() if p.name.startswith(".") and p.name.lstrip(".").split(".")[0] in gone
                 ] if bundles.is_dir() else []  # fmt: skip
        if not tombs or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    problems += [f"half-deleted bundle left: {p}" for p in tombs]
    runc_root = state / "runc" / ns
    if runc_root.is_dir():
        out = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True,
                             check=False, timeout=30)  # fmt: skip
        problems += [f"{cid}: runtime state entry left" for cid in out.stdout.split() if cid in gone]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for cid in gone:
            if (hierarchy / "contactor" / ns / cid).is_dir():
                problems.append(f"{cid}: cgroup left in {hierarchy.name}")
    shims: set[int] = set()
    for rec in ledger.snapshot():
        for pid, start in rec.shims:
            if is_alive_process(pid, start):
                shims.add(pid)
                if rec.id in gone:
                    problems.append(f"{rec.id}: shim {pid} left running")
    for proc in (p for p in os.listdir("/proc") if p.isdigit()):
        cg = _proc_read(proc, "cgroup")
        marker = f"/contactor/{ns}/"
        if marker in cg:
            cid = cg.split(marker, 1)[1].split("\n", 1)[0].split("/", 1)[0]
            if cid in gone and _stat(proc)[0] not in ("", "X"):
                problems.append(f"{cid}: container process {proc} left ({_stat(proc)[0]})")
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{proc}/cwd")
            if cwd.startswith(f"{bundles}/"):
                cid = cwd[len(str(bundles)) + 1:].split("/", 1)[0].split(" ", 1)[0]
                if cid in gone:
                    problems.append(f"{cid}: process {proc} ({_proc_read(proc, 'comm').strip()}) left in its bundle")
    problems += _zombies(shims | daemon_pids(daemon))
    problems += [f"netns left: {n}" for n in _names(Path("/run/netns")) if ns in n]
    problems += [f"link left: {n}" for n in _names(Path("/sys/class/net")) if ns in n]
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(f"{bundles}/") and point[len(str(bundles)) + 1:].split("/")[0] in gone:
                problems.append(f"mount left: {point}")
    return problems


def _names(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except OSError:
        return []


def _zombies(parents: set[int]) -> list[str]:
    """Zombie children of shims, daemon processes or this tool that stay unreaped for a second."""

    def scan() -> set[tuple[int, int]]:
        found = set()
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            status, ppid = _stat(pid)
            if status == "Z" and ppid in parents and ppid != os.getpid():
                found.add((int(pid), ppid))
        return found

    first = scan()
    if not first:
        return []
    time.sleep(1.0)
    return [f"zombie {pid} of {ppid} not reaped" for pid, ppid in sorted(first & scan())]
