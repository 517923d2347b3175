"""Links and network namespaces with pyroute2: the bridge, and a namespace and veth pair per task.

A bridge task gets a network namespace of its own, bind-mounted at
``<state>/.netns/<namespace>/<id>`` (the runtime joins it through the spec),
and a veth pair: ``vc<hash>`` on the host, a port of the bridge, and ``eth0``
in the task's namespace with the task's address, a default route through the
bridge's address, and loopback up.  Names are derived from the state dir, the
namespace and the id, so whoever cleans up (after a delete, a dead shim, or a
daemon restart) finds them without any record.

Namespaces are made without forking: a short-lived thread unshares its own
network namespace and bind-mounts it (``/proc/thread-self/ns/net``), and
work inside a namespace is done by a thread that joined it with ``setns``
(both calls act on the calling thread only).  The actor's own thread never
changes namespace.  Everything here is netlink (pyroute2); nothing runs ``ip``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from actors.errdefs import FailedPrecondition, Internal

if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError

__all__ = [
    "NETNS_DIR",
    "netns_path",
    "host_ifname",
    "ensure_bridge",
    "delete_bridge",
    "create_netns",
    "remove_netns",
    "attach",
    "detach",
    "link_exists",
    "bridge_ports",
    "netns_files",
    "netlink_error",
]

NETNS_DIR: Final = ".netns"  # hidden: never taken for a namespace of bundles by restore
CONTAINER_IFNAME: Final = "eth0"
_CLONE_NEWNET: Final = 0x40000000
_MS_BIND: Final = 4096
_MNT_DETACH: Final = 2
_UMOUNT_NOFOLLOW: Final = 8
_IFF_UP: Final = 1
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def netns_path(state: str | os.PathLike[str], namespace: str, cid: str) -> Path:
    """Where a task's network namespace is bind-mounted (ids are validated before they get here)."""
    return Path(state) / NETNS_DIR / namespace / cid


def host_ifname(state: str | os.PathLike[str], namespace: str, cid: str) -> str:
    """The host end of a task's veth pair: 14 characters, unique per daemon (state dir) and task."""
    digest = hashlib.sha256(f"{os.fspath(state)}\0{namespace}\0{cid}".encode()).hexdigest()
    return f"vc{digest[:12]}"


def netns_files(state: str | os.PathLike[str]) -> Iterator[tuple[str, str, Path]]:
    """(namespace, id, path) of every network namespace file under the state dir."""
    base = Path(state) / NETNS_DIR
    if not base.is_dir():
        return
    for ns_dir in sorted(base.iterdir()):
        if ns_dir.is_dir() and not ns_dir.is_symlink():
            for path in sorted(ns_dir.iterdir()):
                if not path.is_symlink():
                    yield ns_dir.name, path.name, path


def netlink_error() -> Any:  # pyroute2 is untyped
    """pyroute2's error; pyroute2 itself (some 60 ms of imports, asyncio among them) loads on first use,
    so a daemon that never builds a network never pays for it.  An ``except`` evaluates this only
    when something was raised, by which time pyroute2 is loaded."""
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError


@contextmanager
def _ipr() -> Iterator[Any]:
    from pyroute2 import IPRoute

    try:
        ipr = IPRoute()
    except OSError as exc:
        raise FailedPrecondition(f"cannot open a netlink socket: {exc}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink(what: str, exc: NetlinkError) -> Internal:
    return Internal(f"{what}: {os.strerror(exc.code) if exc.code else exc}")


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_exists(name: str) -> bool:
    with _ipr() as ipr:
        return _index(ipr, name) is not None


def bridge_ports(bridge: str) -> list[str]:
    """The names of the links enslaved to ``bridge`` (empty if there is no such bridge)."""
    with _ipr() as ipr:
        index = _index(ipr, bridge)
        if index is None:
            return []
        return sorted(str(link.get("ifname")) for link in ipr.link("dump") if link.get("master") == index)


def _check_overlap(ipr: Any, bridge_index: int | None, gateway: ipaddress.IPv4Interface) -> None:
    for addr in ipr.addr("dump", family=2):
        if addr["index"] == bridge_index:
            continue
        other = ipaddress.IPv4Interface(f"{addr.get('address')}/{addr['prefixlen']}")
        if other.network.overlaps(gateway.network):
            raise FailedPrecondition(f"the subnet {gateway.network} overlaps {other} of another interface: "
                                     "choose another network.subnet")  # fmt: skip


def ensure_bridge(name: str, gateway: ipaddress.IPv4Interface) -> None:
    """Make the bridge if it is missing, give it the gateway address, bring it up; idempotent."""
    with _ipr() as ipr:
        index = _index(ipr, name)
        _check_overlap(ipr, index, gateway)
        if index is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except netlink_error() as exc:
                if exc.code != errno.EEXIST:
                    raise _netlink(f"cannot create the bridge {name}", exc) from None
            index = _index(ipr, name)
            if index is None:
                raise Internal(f"the bridge {name} vanished as it was made")
        link = ipr.link("get", index=index)[0]
        kind = _kind(link)
        if kind != "bridge":
            raise FailedPrecondition(f"network.bridge {name} exists and is not a bridge (it is a {kind})")
        try:
            ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
        except netlink_error() as exc:
            if exc.code != errno.EEXIST:
                raise _netlink(f"cannot give the bridge {name} its address {gateway}", exc) from None
        ipr.link("set", index=index, state="up")


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else "device"


def delete_bridge(name: str) -> bool:
    """Remove the bridge (its ports are set free, not deleted); False if there was none."""
    return detach(name)


def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own (it may change that thread's namespace) and return its result."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the caller
            err.append(exc)

    thread = threading.Thread(target=run, name="contactor-netns", daemon=True)
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def create_netns(path: Path) -> None:
    """A new network namespace, bind-mounted at ``path`` (which must not exist)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def make() -> None:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            raise _os_error("unshare(CLONE_NEWNET)")
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400))
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if _libc.mount(source, os.fsencode(path), b"none", _MS_BIND, None) != 0:
            error = _os_error(f"bind-mount a network namespace at {path}")
            os.unlink(path)
            raise error

    try:
        _in_thread(make)
    except OSError as exc:
        raise FailedPrecondition(f"cannot make a network namespace at {path}: {exc.strerror or exc}") from None


def remove_netns(path: Path) -> bool:
    """Unmount and remove a namespace file; the namespace ends with its last process.  False if absent."""
    if not os.path.lexists(path):
        return False
    # EINVAL: not a mount point (a file left by a create that failed half-way).  Never follow a symlink.
    flags = _MNT_DETACH | _UMOUNT_NOFOLLOW
    if _libc.umount2(os.fsencode(path), flags) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        raise FailedPrecondition(f"cannot unmount the network namespace {path}: {os.strerror(ctypes.get_errno())}")
    with suppress(FileNotFoundError):
        os.unlink(path)
    for parent in (path.parent, path.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break
    return True


def attach(netns: Path, bridge: str, host_if: str, address: ipaddress.IPv4Interface,
           gateway: ipaddress.IPv4Address) -> None:  # fmt: skip
    """A veth pair from ``bridge`` into ``netns`` (as eth0) with ``address``, a default route, lo up."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _ipr() as ipr:
            master = _index(ipr, bridge)
            if master is None:
                raise FailedPrecondition(f"the bridge {bridge} does not exist")
            try:
                ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": fd})
            except netlink_error() as exc:
                raise _netlink(f"cannot create the veth pair {host_if}", exc) from None
            index = _index(ipr, host_if)
            if index is None:
                raise Internal(f"the veth {host_if} vanished as it was made")
            ipr.link("set", index=index, master=master, state="up")

        def configure() -> None:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                raise _os_error(f"join the network namespace {netns}")
            with _ipr() as inner:
                lo, eth0 = _index(inner, "lo"), _index(inner, CONTAINER_IFNAME)
                if lo is None or eth0 is None:
                    raise Internal(f"the network namespace {netns} has no lo or {CONTAINER_IFNAME}")
                inner.link("set", index=lo, state="up")
                inner.addr("add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen)
                inner.link("set", index=eth0, state="up")
                inner.route("add", dst="0.0.0.0/0", gateway=str(gateway))

        try:
            _in_thread(configure)
        except netlink_error() as exc:
            raise _netlink(f"cannot configure {CONTAINER_IFNAME} in {netns}", exc) from None
        except OSError as exc:
            raise FailedPrecondition(str(exc)) from None
    finally:
        os.close(fd)


def detach(host_if: str) -> bool:
    """Delete a link (for a veth, both ends go); False if it did not exist."""
    with _ipr() as ipr:
        index = _index(ipr, host_if)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except netlink_error() as exc:
            if exc.code == errno.ENODEV:
                return False
            raise _netlink(f"cannot delete the link {host_if}", exc) from None
        return True
