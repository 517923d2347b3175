"""Test hosts on one machine: network namespaces on a bridge, each running a contactor daemon of its own.

``make(base, n)`` builds a cluster of ``n`` "hosts": a bridge of its own
(``cb<tag>``) with an address in a free ``10.x.y.0/24``, and per host a network
namespace (bind-mounted at ``/run/netns/cn<tag>-<i>``, so ``ip netns exec``
works) joined to the bridge by a veth pair with the host's address, a config
file (its own root, state dir, socket, node name, the shared leaders list and
convention timings) and one cluster key file shared by all.  A manifest
(``<base>/cluster.json``) records every step *before* it is taken, so
``destroy`` (``scripts/cluster-down``) removes whatever exists, also after a
make that failed half-way.

A daemon runs inside its host's namespace through ``enter_argv(netns)``: a
small launcher (``python -m actors.cluster_hosts enter NETNS -- ARGV``) that
joins the namespace with setns() and execs the command, so the daemon's pid is
the launcher's.  Everything here is netlink (``actors.network``); nothing runs
``ip``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import secrets
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from actors import network
from actors.errdefs import FailedPrecondition

__all__ = ["Host", "Hosts", "make", "destroy", "up", "down", "daemon_of", "enter_argv", "ADMIN_PORT", "MANIFEST"]

NETNS_BASE: Final = Path("/run/netns")
MANIFEST: Final = "cluster.json"
ADMIN_PORT: Final = 1900  # each host has its own network namespace, so every one may use the same port
_CLONE_NEWNET: Final = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Host:
    name: str
    netns: str
    veth: str
    address: str  # with its prefix, e.g. 10.201.7.1/24
    dir: str
    pid: int = 0  # the daemon cluster-up started

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def config(self) -> Path:
        return Path(self.dir) / "contactor.toml"

    @property
    def socket(self) -> str:
        return str(Path(self.dir) / "contactor.sock")


@dataclass
class Hosts:
    base: str
    tag: str
    bridge: str
    gateway: str  # the bridge's own address, with its prefix
    key_file: str
    hosts: list[Host] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.base) / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, base: Path) -> Hosts:
        data = json.loads((base / MANIFEST).read_text())
        hosts = [Host(**h) for h in data.pop("hosts")]
        return cls(**data, hosts=hosts)


def enter_argv(netns: str | os.PathLike[str]) -> list[str]:
    """The argv prefix that runs a command inside ``netns``."""
    return [sys.executable, "-m", "actors.cluster_hosts", "enter", os.fspath(netns), "--"]


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _addresses()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(other) for other in taken):
            return net
    raise FailedPrecondition("no free 10.x.y.0/24 subnet for the test hosts")


def _addresses() -> list[ipaddress.IPv4Network]:
    with network._ipr() as ipr:
        return [ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}").network
                for a in ipr.addr("dump", family=2)]  # fmt: skip


def _config(host: Host, leaders: list[str], key_file: str, timings: dict[str, int], extra: str) -> str:
    d = Path(host.dir)
    lines = [
        "[daemon]", f'root = "{d / "root"}"', f'state = "{d / "state"}"', f'address = "{host.socket}"',
        f"admin_port = {ADMIN_PORT}", "[runtime]", "shim_debug = true", "[log]", 'level = "debug"',
        "[cluster]", f'node = "{host.name}"', f"leaders = {json.dumps(leaders)}",
        f'advertise = "{host.ip}:{ADMIN_PORT}"', f'key_file = "{key_file}"',
        *(f"{k} = {v}" for k, v in timings.items()),
    ]  # fmt: skip
    return "\n".join(lines) + "\n" + extra


def make(base: Path, n: int, leaders: int = 1, timings: dict[str, int] | None = None,
         keys: dict[str, str] | None = None, labels: dict[str, list[str]] | None = None) -> Hosts:  # fmt: skip
    """``n`` hosts named ``node1``..``nodeN``; the first ``leaders`` of them are the convention leaders.

    ``keys`` maps a host name to a key file of its own instead of the cluster's; ``labels`` maps a
    host name to its ``[cluster] labels`` (``["zone=b"]``).
    """
    if not 1 <= n <= 200 or not 1 <= leaders <= n:
        raise FailedPrecondition(f"cannot make {n} hosts with {leaders} leaders")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    subnet = _free_subnet()
    gateway = ipaddress.IPv4Interface(f"{subnet[254]}/{subnet.prefixlen}")
    key_file = base / "cluster.key"
    hosts = Hosts(str(base), tag, f"cb{tag}", str(gateway), str(key_file))
    hosts.save()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with contextlib.closing(os.fdopen(fd, "wb")) as f:
        f.write(secrets.token_bytes(32))
    try:
        network.ensure_bridge(hosts.bridge, gateway)
        NETNS_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
        for i in range(1, n + 1):
            host = Host(f"node{i}", str(NETNS_BASE / f"cn{tag}-{i}"), f"cv{tag}-{i}",
                        f"{subnet[i]}/{subnet.prefixlen}", str(base / f"node{i}"))  # fmt: skip
            hosts.hosts.append(host)
            hosts.save()
            network.create_netns(Path(host.netns))
            network.attach(Path(host.netns), hosts.bridge, host.veth, ipaddress.IPv4Interface(host.address),
                           gateway.ip)  # fmt: skip
            Path(host.dir).mkdir(mode=0o700, exist_ok=True)
        leader_list = [f"{h.ip}:{ADMIN_PORT}" for h in hosts.hosts[:leaders]]
        for host in hosts.hosts:
            extra = f"labels = {json.dumps((labels or {}).get(host.name, []))}\n"
            text = _config(host, leader_list, (keys or {}).get(host.name, str(key_file)), timings or {}, extra)
            host.config.write_text(text)
    except BaseException:
        destroy(base)
        raise
    return hosts


def destroy(base: Path) -> list[str]:
    """Remove the veths, namespaces, bridge and dir recorded in ``base``'s manifest; what was removed.

    Daemons must be stopped first (``scripts/cluster-down`` and the tests' fixtures do it).
    """
    removed: list[str] = []
    try:
        hosts = Hosts.load(base)
    except (OSError, ValueError, TypeError):
        shutil.rmtree(base, ignore_errors=True)
        return removed
    for host in hosts.hosts:
        with contextlib.suppress(Exception):
            if network.detach(host.veth):
                removed.append(host.veth)
        with contextlib.suppress(Exception):
            if network.remove_netns(Path(host.netns)):
                removed.append(host.netns)
    with contextlib.suppress(Exception):
        if network.delete_bridge(hosts.bridge):
            removed.append(hosts.bridge)
    removed += _unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)
    return removed


def _unmount_under(base: Path) -> list[str]:
    """Unmount whatever is still mounted below ``base`` (a killed daemon's task rootfs): rmtree would
    otherwise walk into a bind mount and delete the files of its source."""
    from actors.mount import unmount_all

    prefix = str(base.absolute()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    under = sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)
    for point in under:
        with contextlib.suppress(OSError):
            unmount_all(point)
    return under


def daemon_of(host: Host, namespace: str = "default") -> Any:
    """A ``actors.testing.Daemon`` for the host's daemon, run inside its namespace."""
    from actors.testing import Daemon

    d = Path(host.dir)
    return Daemon(host.config, d / "state", d / "root", host.socket, d / "daemon.log", namespace,
                  launcher=tuple(enter_argv(host.netns)))  # fmt: skip


def up(base: Path, n: int, leaders: int) -> Hosts:
    """``scripts/cluster-up``: make the hosts and start their daemons (leaders first)."""
    hosts = make(base, n, leaders)
    try:
        for host in hosts.hosts:
            daemon = daemon_of(host)
            daemon.start()
            host.pid = daemon.proc.pid
            hosts.save()
    except BaseException:
        down(base)
        raise
    return hosts


def down(base: Path) -> list[str]:
    """``scripts/cluster-down``: remove every task and container, stop the daemons, remove the hosts."""
    import psutil

    from actors.testing import Daemon, tear_down

    try:
        hosts = Hosts.load(base)
    except (OSError, ValueError, TypeError):
        return destroy(base)
    for host in hosts.hosts:
        if not host.pid or not psutil.pid_exists(host.pid):
            continue
        daemon: Daemon = daemon_of(host)
        daemon.proc = _Adopted(host.pid)  # type: ignore[assignment]
        tear_down(daemon)
    return destroy(base)


class _Adopted:
    """Enough of a Popen for ``tear_down`` to stop a daemon another process started."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.pid = pid
        self._proc = psutil.Process(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return None if self._proc.is_running() and self._proc.status() != "zombie" else 0

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(9)

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        import psutil

        try:
            self._proc.wait(timeout)
        except psutil.TimeoutExpired:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0) from None
        return 0


def _enter(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m actors.cluster_hosts enter NETNS -- COMMAND [ARG...]", file=sys.stderr)
        return 120
    fd = os.open(argv[0], os.O_RDONLY | os.O_CLOEXEC)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        print(f"contactor: cannot enter {argv[0]}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 123
    os.close(fd)
    try:
        os.execvp(argv[2], argv[2:])
    except OSError as exc:
        print(f"contactor: cannot run {argv[2]}: {exc.strerror or exc}", file=sys.stderr)
    return 121


_USAGE: Final = ("usage: python -m actors.cluster_hosts up N [LEADERS] DIR | down DIR | "
                 "enter NETNS -- COMMAND [ARG...]")  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[:1] == ["enter"]:
        return _enter(argv[1:])
    try:
        if argv[:1] == ["up"] and len(argv) in (3, 4) and all(a.isdigit() for a in argv[1:-1]):
            hosts = up(Path(argv[-1]).absolute(), int(argv[1]), int(argv[2]) if len(argv) == 4 else 1)
            for h in hosts.hosts:
                print(f"{h.name} {h.ip} netns={h.netns} socket={h.socket} config={h.config}")
            return 0
        if argv[:1] == ["down"] and len(argv) == 2:
            for what in down(Path(argv[1]).absolute()):
                print(f"removed {what}")
            return 0
    except FailedPrecondition as exc:
        print(f"contactor: failed precondition: {exc.message}", file=sys.stderr)
        return 123
    print(_USAGE, file=sys.stderr)
    return 120


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
