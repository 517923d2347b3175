"""The daemon's configuration: one frozen value, read once from TOML.

``load()`` reads ``contactor.toml`` (``conf/contactor.toml`` documents every
option) and returns a :class:`Config`; every option has a default, so
``load(None)`` needs no file at all.  The file is checked whole before anything
uses it: an unknown section or key, a wrong type, a value outside its choices,
a relative path, a bad port or subnet raise ``InvalidArgument`` naming the key
(``section.key``) and the file.  The value is then passed down to whoever
needs it; no module reads the file or the environment on its own.  The
reading and the checks are ``actors._config_file``'s, which hands the command
line the file's values without building a Config.

An empty string in the file means "derive it": ``runtime.binary`` is looked up
on PATH, ``runtime.root`` lives under the state dir (``Config.runtime_root``),
``cluster.node`` is the hostname.  Those fields are ``None`` here.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from actors import _config_file
from actors import restart as restart_defaults

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

DEFAULT_PATH: Final = Path(_config_file.DEFAULT_PATH)

# The choices of the file's options; actors._config_file checks the file against its tuples of the same.
RuntimeName = Literal["runc", "crun"]
CgroupDriver = Literal["cgroupfs", "systemd"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
NetworkMode = Literal["none", "host", "bridge"]

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
    # Set cgroup2's favordynmods at start: a process moves between cgroups without an RCU wait
    # (see actors/_cgroup_dynmods.py).
    favor_dynmods: bool = True


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
    return from_values(_config_file.read(str(path)))


def from_values(values: dict[str, dict[str, Any]]) -> Config:
    """The Config of a file's checked values (``actors._config_file.read``)."""
    d, r, lg, n, cl = (values[name] for name in ("daemon", "runtime", "log", "network", "cluster"))
    return Config(
        daemon=DaemonConfig(
            root=Path(d["root"]),
            state=Path(d["state"]),
            address=Path(d["address"]),
            admin_port=d["admin_port"],
        ),
        runtime=RuntimeConfig(
            **{**r, "binary": _optional_path(r["binary"]), "root": _optional_path(r["root"])}
        ),
        cgroups=CgroupsConfig(**values["cgroups"]),
        log=LogConfig(**{**lg, "file": _optional_path(lg["file"])}),
        network=NetworkConfig(**{**n, "subnet": ipaddress.IPv4Network(n["subnet"])}),
        cluster=ClusterConfig(**{**cl, "key_file": _optional_path(cl["key_file"])}),
        gateway=GatewayConfig(**values["gateway"]),
        events=EventsConfig(**values["events"]),
        restart=RestartConfig(**values["restart"]),
    )


def _optional_path(value: str | None) -> Path | None:
    return None if value is None else Path(value)
