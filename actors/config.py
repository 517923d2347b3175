"""The daemon's configuration: one frozen value, read once from TOML.

``load()`` reads ``contactor.toml`` (``conf/contactor.toml`` documents every
option) and returns a :class:`Config`; every option has a default, so
``load(None)`` needs no file at all.  The file is checked whole before anything
uses it: an unknown section or key, a wrong type, a value outside its choices,
a relative path, a bad port or subnet raise ``InvalidArgument`` naming the key
(``section.key``) and the file.  The value is then passed down to whoever
needs it; no module reads the file or the environment on its own.

An empty string in the file means "derive it": ``runtime.binary`` is looked up
on PATH, ``runtime.root`` lives under the state dir (``Config.runtime_root``),
``cluster.node`` is the hostname.  Those fields are ``None`` here.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, cast, get_args

from actors import restart as restart_defaults
from actors.errdefs import InvalidArgument, NotFound

__all__ = [
    "DEFAULT_PATH",
    "CgroupsConfig",
    "ClusterConfig",
    "Config",
    "DaemonConfig",
    "LogConfig",
    "NetworkConfig",
    "RuntimeConfig",
    "load",
]

DEFAULT_PATH: Final = Path("/etc/contactor/contactor.toml")

RuntimeName = Literal["runc", "crun"]
CgroupDriver = Literal["cgroupfs", "systemd"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
NetworkMode = Literal["none", "host", "bridge"]

# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
_MAX_IFNAME: Final = 15
_DEFAULT_SUBNET: Final = ipaddress.IPv4Network("10.88.0.0/16")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    root: Path = Path("/var/lib/contactor")
    state: Path = Path("/run/contactor")
    address: Path = Path("/run/contactor/contactor.sock")
    admin_port: int = 19320


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    name: RuntimeName = "runc"
    binary: Path | None = None
    root: Path | None = None
    shim: str = "contactor-shim"
    no_shim: bool = False
    shim_debug: bool = False

    @property
    def command(self) -> str:
        """What to exec for the OCI runtime: the configured binary, else its name (found on PATH)."""
        return str(self.binary) if self.binary is not None else self.name


@dataclass(frozen=True, slots=True)
class CgroupsConfig:
    driver: CgroupDriver = "cgroupfs"
    parent: str = "/contactor"


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: LogFormat = "json"
    level: LogLevel = "info"
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    mode: NetworkMode = "none"
    bridge: str = "contactor0"
    subnet: ipaddress.IPv4Network = _DEFAULT_SUBNET
    nat: bool = False


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node: str | None = None
    leaders: tuple[str, ...] = ()
    advertise: str | None = None
    key_file: Path | None = None
    labels: tuple[tuple[str, str], ...] = ()
    # Convention timings, whole seconds, identical on every node: a member re-registers (and sends
    # its heartbeat) every ``reregister`` seconds and is declared lost after ``miss_max`` missed ones.
    reregister: int = 10
    miss_max: int = 3
    restart_period: int = 10

    @property
    def node_name(self) -> str:
        """This node's name: the configured one, else the hostname."""
        return self.node or socket.gethostname()

    @property
    def clustered(self) -> bool:
        return bool(self.leaders)

    @property
    def is_leader(self) -> bool:
        return self.advertise is not None and self.advertise in self.leaders

    @property
    def advertise_host(self) -> str | None:
        return self.advertise.rpartition(":")[0] if self.advertise else None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    max_frame: int = 4 * 1024 * 1024
    max_connections: int = 512
    max_backlog: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EventsConfig:
    max_entries: int = 100_000
    max_age: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RestartConfig:
    base: float = restart_defaults.BASE
    cap: float = restart_defaults.CAP
    reset_after: float = restart_defaults.RESET_AFTER


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cgroups: CgroupsConfig = field(default_factory=CgroupsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    restart: RestartConfig = field(default_factory=RestartConfig)

    @property
    def runtime_root(self) -> Path:
        """The OCI runtime's state root (``--root``): configured, else ``<state>/runc``.

        Every runtime call, cleanup included, must use this one path.
        """
        return self.runtime.root if self.runtime.root is not None else self.daemon.state / "runc"


def load(path: Path | None = None) -> Config:
    """Read and check the configuration at ``path``; ``None`` gives all defaults.

    A file that was asked for but does not exist is NotFound; anything wrong
    inside it is InvalidArgument.
    """
    if path is None:
        return Config()
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise NotFound(f"{path}: configuration file not found") from None
    except OSError as e:
        raise InvalidArgument(f"{path}: cannot read configuration: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{path}: invalid TOML: {e}") from None
    return _build(document, str(path))


_SECTIONS: Final[dict[str, type]] = {
    "daemon": DaemonConfig,
    "runtime": RuntimeConfig,
    "cgroups": CgroupsConfig,
    "log": LogConfig,
    "network": NetworkConfig,
    "cluster": ClusterConfig,
    "gateway": GatewayConfig,
    "events": EventsConfig,
    "restart": RestartConfig,
}


def _build(document: dict[str, Any], source: str) -> Config:
    for name, value in document.items():
        if name not in _SECTIONS:
            raise InvalidArgument(f"{source}: unknown section [{name}]")
        if not isinstance(value, dict):
            raise InvalidArgument(f"{source}: {name} must be a table ([{name}]), not {_toml_type(value)}")

    def section(name: str) -> _Section:
        return _Section(source, name, document.get(name, {}), _SECTIONS[name])

    s = section("daemon")
    d = DaemonConfig()
    daemon = DaemonConfig(
        root=s.abspath("root", d.root),
        state=s.abspath("state", d.state),
        address=s.socket_path("address", d.address),
        admin_port=s.port("admin_port", d.admin_port),
    )

    s = section("runtime")
    r = RuntimeConfig()
    runtime = RuntimeConfig(
        name=cast(RuntimeName, s.choice("name", r.name, RuntimeName)),
        binary=s.optional_abspath("binary"),
        root=s.optional_abspath("root"),
        shim=s.command("shim", r.shim),
        no_shim=s.boolean("no_shim", r.no_shim),
        shim_debug=s.boolean("shim_debug", r.shim_debug),
    )

    s = section("cgroups")
    c = CgroupsConfig()
    driver = cast(CgroupDriver, s.choice("driver", c.driver, CgroupDriver))
    parent = s.string("parent", c.parent)
    if driver == "cgroupfs" and (not parent.startswith("/") or ".." in parent.split("/")):
        s.fail("parent", f"must be an absolute path without '..' for the cgroupfs driver, not {parent!r}")
    if driver == "systemd" and not parent:
        s.fail("parent", "must name a slice for the systemd driver")
    cgroups = CgroupsConfig(driver=driver, parent=parent)

    s = section("log")
    lg = LogConfig()
    log = LogConfig(
        format=cast(LogFormat, s.choice("format", lg.format, LogFormat)),
        level=cast(LogLevel, s.choice("level", lg.level, LogLevel)),
        file=s.optional_abspath("file"),
    )

    s = section("network")
    n = NetworkConfig()
    network = NetworkConfig(
        mode=cast(NetworkMode, s.choice("mode", n.mode, NetworkMode)),
        bridge=s.ifname("bridge", n.bridge),
        subnet=s.subnet("subnet", n.subnet),
        nat=s.boolean("nat", n.nat),
    )

    s = section("cluster")
    leaders = s.strings("leaders")
    for leader in leaders:
        s.check_host_port("leaders", leader)
    advertise = s.string("advertise", "") or None
    if advertise is not None:
        s.check_host_port("advertise", advertise)
    cl = ClusterConfig()
    labels = []
    for item in s.strings("labels"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            s.fail("labels", f"must be an array of 'key=value' strings, not contain {item!r}")
        labels.append((key, value))
    cluster = ClusterConfig(
        node=s.string("node", "") or None,
        leaders=leaders,
        advertise=advertise,
        key_file=s.optional_abspath("key_file"),
        labels=tuple(labels),
        reregister=s.positive("reregister", cl.reregister, 3600),
        miss_max=s.positive("miss_max", cl.miss_max, 100),
        restart_period=s.positive("restart_period", cl.restart_period, 3600),
    )
    if cluster.restart_period > cluster.reregister:
        # Thespian's member loop sleeps restart_period: longer than reregister, live members get dropped.
        s.fail("restart_period", f"must not be longer than cluster.reregister ({cluster.reregister})")
    if leaders and advertise is None:
        s.fail("advertise", "is required when cluster.leaders is set (the address other nodes reach)")
    if leaders and cluster.key_file is None:
        s.fail("key_file", "is required when cluster.leaders is set (every node needs the same key)")
    if advertise is not None and int(advertise.rpartition(":")[2]) != daemon.admin_port:
        s.fail("advertise", f"must use the admin port daemon.admin_port ({daemon.admin_port})")

    s = section("gateway")
    g = GatewayConfig()
    gateway = GatewayConfig(
        max_frame=s.positive("max_frame", g.max_frame, 1 << 30),
        max_connections=s.positive("max_connections", g.max_connections, 65536),
        max_backlog=s.positive("max_backlog", g.max_backlog, 1 << 34),
    )
    s = section("events")
    e = EventsConfig()
    events = EventsConfig(
        max_entries=s.positive("max_entries", e.max_entries, 1 << 40),
        max_age=s.seconds("max_age", e.max_age),
    )
    s = section("restart")
    rs = RestartConfig()
    restart = RestartConfig(
        base=s.seconds("base", rs.base),
        cap=s.seconds("cap", rs.cap),
        reset_after=s.seconds("reset_after", rs.reset_after),
    )
    if restart.cap < restart.base:
        s.fail("cap", f"must not be less than restart.base ({restart.base})")
    return Config(daemon=daemon, runtime=runtime, cgroups=cgroups, log=log, network=network, cluster=cluster,
                  gateway=gateway, events=events, restart=restart)  # fmt: skip


class _Section:
    """Typed reads of one TOML table; every error names ``section.key`` and the file."""

    def __init__(self, source: str, name: str, table: dict[str, Any], cls: type) -> None:
        self._source = source
        self._name = name
        self._table = table
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise InvalidArgument(f"{source}: unknown key {name}.{key}")

    def fail(self, key: str, problem: str) -> NoReturn:
        raise InvalidArgument(f"{self._source}: {self._name}.{key} {problem}")

    def _typed(self, key: str, default: object, kind: type, kind_name: str) -> Any:
        value = self._table.get(key, default)
        # bool is an int in Python but not in TOML.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"must be {kind_name}, not {_toml_type(value)}")
        return value

    def string(self, key: str, default: str) -> str:
        return cast(str, self._typed(key, default, str, "a string"))

    def boolean(self, key: str, default: bool) -> bool:
        return cast(bool, self._typed(key, default, bool, "a boolean"))

    def integer(self, key: str, default: int) -> int:
        return cast(int, self._typed(key, default, int, "an integer"))

    def positive(self, key: str, default: int, most: int) -> int:
        value = self.integer(key, default)
        if not 1 <= value <= most:
            self.fail(key, f"must be from 1 to {most}, not {value}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self._table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.fail(key, f"must be a positive number of seconds, not {value!r}")
        return float(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = cast(list[object], self._typed(key, [], list, "an array of strings"))
        for item in value:
            if not isinstance(item, str):
                self.fail(key, f"must be an array of strings, not contain {_toml_type(item)}")
        return tuple(cast(list[str], value))

    def choice(self, key: str, default: str, choices: object) -> str:
        allowed: tuple[str, ...] = get_args(choices)
        value = self.string(key, default)
        if value not in allowed:
            self.fail(key, f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
        return value

    def abspath(self, key: str, default: Path) -> Path:
        value = self.string(key, str(default))
        if not value.startswith("/"):
            self.fail(key, f"must be an absolute path, not {value!r}")
        return Path(value)

    def optional_abspath(self, key: str) -> Path | None:
        if not self.string(key, ""):
            return None
        return self.abspath(key, Path())

    def socket_path(self, key: str, default: Path) -> Path:
        path = self.abspath(key, default)
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            self.fail(key, f"is longer than a unix socket path may be ({_MAX_SOCKET_PATH} bytes)")
        return path

    def command(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if not value or ("/" in value and not value.startswith("/")):
            self.fail(key, f"must be a command name or an absolute path, not {value!r}")
        return value

    def port(self, key: str, default: int) -> int:
        value = self.integer(key, default)
        if not 1 <= value <= 65535:
            self.fail(key, f"must be a port between 1 and 65535, not {value}")
        return value

    def ifname(self, key: str, default: str) -> str:
        value = self.string(key, default)
        bad = not value or len(value) > _MAX_IFNAME or value in {".", ".."}
        if bad or any(ch in value for ch in "/: \t\n"):
            self.fail(key, f"must be an interface name of 1 to {_MAX_IFNAME} characters, not {value!r}")
        return value

    def subnet(self, key: str, default: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        value = self.string(key, str(default))
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError as e:
            self.fail(key, f"must be an IPv4 subnet such as '10.88.0.0/16', not {value!r} ({e})")
        if net.prefixlen > 30:
            self.fail(key, f"must leave room for a gateway and containers (/30 or shorter), not {value!r}")
        return net

    def check_host_port(self, key: str, value: str) -> None:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            self.fail(key, f"must be 'host:port' with a port between 1 and 65535, not {value!r}")


# bool before int: a bool is an int in Python.
_TOML_TYPES: Final = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    for kind, name in _TOML_TYPES:
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"
