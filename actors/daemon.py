"""``contactor daemon``: the supervisor process (not an actor) that keeps the actor system alive.

Thespian's admin dies on SIGTERM without cleaning up and leaves its actors
orphaned, holding the port; nothing restarts it.  So this process: takes the
state dir's lock (a second daemon refuses), clears a stale actor system left
by an earlier run (its recorded process group), starts the actor system and
the Supervisor, watches the admin through a pidfd and restarts everything if
it dies, and on SIGTERM/SIGINT shuts the actor system down and kills what is
left of it.  Shims and containers live in sessions of their own: stopping or
restarting the daemon never touches them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import time
from pathlib import Path
from typing import Any, Final

import psutil

from actors.config import Config
from actors.errdefs import FailedPrecondition, Unavailable
from actors.logs import get_logger

__all__ = ["run", "BOOT_TIMEOUT", "SUPERVISOR_NAME", "capabilities"]

# The one global name: a node agent that another node's leader places here finds the Supervisor by it.
SUPERVISOR_NAME: Final = "contactor-supervisor"

BOOT_TIMEOUT: Final = 60.0
SHUTDOWN_TIMEOUT: Final = 10.0
_THESPIAN_LOGS: Final = {
    "version": 1,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"], "level": "CRITICAL"},
}


class _Lock:
    """``<state>/contactor.pid``, locked for the daemon's lifetime.

    A POSIX record lock (``lockf``), not ``flock``: a flock belongs to the open file,
    which every process forked from the daemon (the actor system, the shim factory)
    shares, so after a SIGKILL of the daemon its orphaned actor system would keep the
    lock and no new daemon could start to clear it away.  A record lock is the
    daemon process's own and dies with it.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / "contactor.pid"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(self.fd)
                raise
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise FailedPrecondition(
                f"another contactor daemon (pid {other}) is running on {state}"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


def _kill_group(pgid: int, log: Any) -> None:
    """SIGKILL every process of an actor system's process group (never a shim: shims lead their own)."""
    if pgid <= 1:
        return
    victims = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):  # a process may exit meanwhile
            if os.getpgid(proc.pid) == pgid and proc.pid != os.getpid():
                victims.append(proc)
    if not victims:
        return
    log.warning("killing_actor_system", pgid=pgid, processes=len(victims))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(victims, timeout=5)


def _clear_stale(state: Path, log: Any) -> None:
    path = state / "actors.pgid"
    with contextlib.suppress(OSError, ValueError):
        _kill_group(int(path.read_text()), log)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_empty_cgroup_parents(cfg: Config) -> None:
    """On stop, the cgroup parent and its namespace dirs go if no container is left in them
    (rmdir of a cgroup that still holds one fails, so running containers are never touched)."""
    if cfg.cgroups.driver != "cgroupfs":
        return
    from actors.cgroups import hierarchies, remove_empty_parents

    parent = str(cfg.cgroups.parent).rstrip("/")
    for hierarchy in hierarchies():
        base = hierarchy / parent.lstrip("/")
        with contextlib.suppress(OSError):
            for ns_dir in base.iterdir():
                if ns_dir.is_dir():
                    remove_empty_parents(f"{parent}/{ns_dir.name}")
    remove_empty_parents(parent)


def factory_address(state: Path) -> Path:
    return state / "shim-factory.sock"


def _start_factory(state: Path, log: Any) -> int:
    """The warm shim factory; a stale one from an earlier daemon is stopped first."""
    from actors.shim.factory import start_factory

    pid_file = state / "shim-factory.pid"
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        old = psutil.Process(int(pid_file.read_text()))
        if any("contactor" in part or "actors" in part for part in old.cmdline()):
            old.kill()
    try:
        pid = start_factory(str(factory_address(state)))
    except OSError as exc:
        log.warning("shim_factory_unavailable", error=str(exc))  # shims are exec'd instead
        return 0
    pid_file.write_text(f"{pid}\n")
    log.info("shim_factory_started", pid=pid)
    return pid


class _Factory:
    """The shim factory, started again when it dies (until then, and if it cannot be, shims are exec'd)."""

    def __init__(self, state: Path, log: Any) -> None:
        self.state, self.log = state, log
        self.pid, self.pidfd = 0, -1
        self.deaths: list[float] = []

    def start(self) -> None:
        self.pid = _start_factory(self.state, self.log)
        self.pidfd = -1
        if self.pid:
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:  # died at once: the next start is the caller's call
                self.died()

    def died(self) -> None:
        """Its pidfd fired: start another, unless it keeps dying (5 deaths within a minute)."""
        self.log.error("shim_factory_died", pid=self.pid)
        self._close()
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < 60.0] + [now]
        if len(self.deaths) >= 5:
            self.log.error("shim_factory_given_up", deaths=len(self.deaths))  # shims are exec'd instead
            self.pid = 0
            return
        self.start()

    def _close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def stop(self) -> None:
        self._close()
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)


def _environment(cfg: Config) -> None:
    """Thespian reads these at import: set them before it is imported."""
    root = Path(cfg.daemon.root)
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.environ.setdefault("THESPLOG_FILE", str(root / "thespian.log"))
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")
    # A dead external client must not keep an actor retrying a send for the default 5 minutes.
    # Thespian reads it as minutes:seconds; anything else is ignored (with a warning) for 5:00.
    os.environ.setdefault("THESPIAN_TRANSMIT_TIMEOUT_PERIOD", "0:20")
    if cfg.cluster.clustered:
        # Identical on every node (they come from the shared [cluster] values): a lost member is noticed
        # after reregister * miss_max, not Thespian's 22 minutes, and restart <= reregister keeps live
        # members from being dropped.
        c = cfg.cluster
        os.environ["CONVENTION_REREGISTRATION_PERIOD"] = _minutes(c.reregister)
        os.environ["CONVENTION_RESTART_PERIOD"] = _minutes(c.restart_period)
        os.environ["CONVENTION_REGISTRATION_MISS_MAX"] = str(c.miss_max)


def _favor_dynmods(cfg: Config, log: Any) -> None:
    """cgroup2's favordynmods, as configured (see actors/_cgroup_dynmods.py); never fatal."""
    if not cfg.cgroups.favor_dynmods:
        return
    from actors._cgroup_dynmods import favor_dynmods

    try:
        outcome = favor_dynmods()
    except OSError as exc:
        outcome = str(exc)
    if outcome in ("set", "already"):
        log.info("cgroup_favor_dynmods", outcome=outcome)
    else:
        log.warning("cgroup_favor_dynmods_unavailable", reason=outcome)


def _minutes(seconds: int) -> str:
    """Thespian's M:SS."""
    return f"{seconds // 60}:{seconds % 60:02d}"


def capabilities(cfg: Config) -> dict[str, Any]:
    """What this node's actor system tells the convention: where to meet, and what this node offers."""
    import shutil

    caps: dict[str, Any] = {"Admin Port": cfg.daemon.admin_port}
    if not cfg.cluster.clustered:
        return caps
    runtimes = sorted(name for name in ("runc", "crun") if shutil.which(name))
    if cfg.runtime.binary is not None and cfg.runtime.name not in runtimes:
        runtimes.append(cfg.runtime.name)
    caps.update({
        "Convention Address.IPv4": list(cfg.cluster.leaders),
        # No code from other nodes: every node runs the same installed package.
        "AllowRemoteActorSources": "No",
        "contactor.node": cfg.cluster.node_name,
        "contactor.labels": dict(cfg.cluster.labels),
        "contactor.cpus": os.cpu_count() or 1,
        "contactor.memory": psutil.virtual_memory().total,
        "contactor.runtimes": runtimes,
    })  # fmt: skip
    return caps


def run(cfg: Config) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    log = get_logger(component="daemon")
    # Everything the daemon, its actors and its logs create is root's alone unless said otherwise.
    os.umask(0o077)
    state = Path(cfg.daemon.state)
    state.mkdir(mode=0o711, parents=True, exist_ok=True)
    lock = _Lock(state)
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(stop_w)
    stopping: list[int] = []
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda s, f: stopping.append(s))
    factory = _Factory(state, log)
    try:
        _clear_stale(state, log)
        _favor_dynmods(cfg, log)
        factory.start()
        _environment(cfg)
        restarts = 0
        while not stopping:
            pgid = _serve_once(cfg, state, stop_r, stopping, log, factory)
            _kill_group(pgid, log)
            if stopping:
                break
            restarts += 1
            log.error("actor_system_died_restarting", restarts=restarts)
            time.sleep(min(5.0, 0.2 * restarts))
        return 0
    finally:
        factory.stop()
        for leftover in (state / "actors.pgid", Path(cfg.daemon.address), state / "shim-factory.pid",
                         factory_address(state)):  # fmt: skip
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        _remove_empty_cgroup_parents(cfg)
        lock.release()
        log.info("daemon_stopped")


def _serve_once(cfg: Config, state: Path, stop_r: int, stopping: list[int], log: Any, factory: _Factory) -> int:
    """Start the actor system, serve until it dies or we are asked to stop; returns its pgid."""
    from thespian.actors import ActorSystem

    from actors.messages import Boot, Booted, Drain, Drained
    from actors.supervisor import Supervisor
    from actors.thespian_tuning import tune
    from actors.transport import load_key, secure

    # Before the system starts: the admin and every actor are forked from here and inherit it.
    # A cluster shares one key (cluster.key_file); a single node makes its own at first start.
    # Clustered, every port binds to (and the system advertises) the advertise address instead of loopback.
    bind_host = cfg.cluster.advertise_host if cfg.cluster.clustered else "127.0.0.1"
    if cfg.network.mode == "bridge":
        # Loaded here when every task gets a network, so all actors share it; otherwise the first
        # bridge task loads it (actors.network.netlink_error).
        import pyroute2  # noqa: F401
    secure(load_key(cfg.cluster.key_file or Path(cfg.daemon.root) / "transport.key"), bind_host=bind_host)
    tune()

    started = time.monotonic()
    asys = ActorSystem("multiprocTCPBase", capabilities(cfg), logDefs=_THESPIAN_LOGS,
                       transientUnique=True)  # fmt: skip
    pgid = 0
    try:
        supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
        booted = asys.ask(supervisor, Boot(cfg), BOOT_TIMEOUT)
        if not isinstance(booted, Booted):
            raise Unavailable(f"the actor system did not start: {booted!r}")
        pgid = booted.pgid
        (state / "actors.pgid").write_text(f"{pgid}\n")
        # The admin's process group leader is the fork that daemonized it: our child, gone by now,
        # and Thespian detached it from multiprocessing, so nobody else reaps it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, 0)
        log.info("daemon_ready", admin_pid=booted.admin_pid, pgid=pgid, address=str(cfg.daemon.address),
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip
        # The admin, and the Supervisor that nothing else would restart: either dying restarts all.
        watched = {
            os.pidfd_open(booted.admin_pid): "admin",
            os.pidfd_open(booted.supervisor_pid): "supervisor",
        }
        try:
            while not stopping:
                factory_fd = factory.pidfd
                ready, _, _ = select.select([*watched, stop_r, *([factory_fd] if factory_fd >= 0 else [])], [], [])
                with contextlib.suppress(BlockingIOError):
                    os.read(stop_r, 64)
                if factory_fd >= 0 and factory_fd in ready:
                    factory.died()
                dead = [watched[fd] for fd in ready if fd in watched]
                if dead:
                    log.error("actor_system_died", process=dead[0], admin_pid=booted.admin_pid,
                              supervisor_pid=booted.supervisor_pid)  # fmt: skip
                    return pgid
        finally:
            for fd in watched:
                os.close(fd)
        log.info("daemon_stopping", signal=stopping[0])
        # The runtime first: a create or delete under way ends and is published while the Exchange lives.
        drained = asys.ask(supervisor, Drain(), SHUTDOWN_TIMEOUT)
        if not isinstance(drained, Drained):
            # Thespian's own shutdown would wait as long again for the same stuck actors. Killing
            # the actor system leaves what a crash leaves, which a restore finishes: no less safe.
            log.warning("runtime_not_drained", reply=repr(drained))
            return pgid
        asys.shutdown()
        return pgid
    except BaseException:
        with contextlib.suppress(Exception):
            asys.shutdown()
        raise
