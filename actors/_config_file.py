"""Reading and checking ``contactor.toml``: the file's values, checked, as plain data.

``read()`` returns every option of every section (a default where the file is
silent), checked the way ``actors.config`` documents it; a problem raises
``InvalidArgument`` naming ``section.key`` and the file.  ``actors.config``
builds its frozen ``Config`` from these values.  The command line reads them
directly: it needs three of them, and this module costs little to import (no
dataclasses, no pathlib, no tomllib for a file in plain TOML: ``actors._toml_lite``).

Paths are returned as the file spells them; ``path_text`` gives the form
``pathlib.Path`` would print.  ``DEFAULTS`` must agree with the defaults of
``actors.config``'s dataclasses (tests/test_config.py checks that they do).
"""

from __future__ import annotations

import os

from actors import _toml_lite
from actors.errdefs import InvalidArgument, NotFound

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any, Final, NoReturn

__all__ = ["DEFAULT_PATH", "DEFAULTS", "read", "check", "path_text"]

DEFAULT_PATH: Final = "/etc/contactor/contactor.toml"

# What each choice allows; actors.config's Literal types spell the same (tests/test_config.py checks).
RUNTIME_NAMES: Final = ("runc", "crun")
CGROUP_DRIVERS: Final = ("cgroupfs", "systemd")
LOG_FORMATS: Final = ("json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
NETWORK_MODES: Final = ("none", "host", "bridge")

# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
_MAX_IFNAME: Final = 15

# Every section, every key and its default (None: derived by whoever uses it).
DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "daemon": {
        "root": "/var/lib/contactor",
        "state": "/run/contactor",
        "address": "/run/contactor/contactor.sock",
        "admin_port": 19320,
    },
    "runtime": {
        "name": "runc",
        "binary": None,
        "root": None,
        "shim": "contactor-shim",
        "no_shim": False,
        "shim_debug": False,
    },
    "cgroups": {"driver": "cgroupfs", "parent": "/contactor", "favor_dynmods": True},
    "log": {"format": "json", "level": "info", "file": None},
    "network": {"mode": "none", "bridge": "contactor0", "subnet": "10.88.0.0/16", "nat": False},
    "cluster": {
        "node": None,
        "leaders": (),
        "advertise": None,
        "key_file": None,
        "labels": (),
        "reregister": 10,
        "miss_max": 3,
        "restart_period": 10,
    },
    "gateway": {"max_frame": 4 * 1024 * 1024, "max_connections": 512, "max_backlog": 16 * 1024 * 1024},
    "events": {"max_entries": 100_000, "max_age": 7 * 24 * 3600.0},
    "restart": {"base": 0.2, "cap": 30.0, "reset_after": 10.0},
}


def path_text(path: str) -> str:
    """``str(pathlib.Path(path))``: repeated slashes and ``.`` parts dropped, a leading ``//`` kept."""
    root = "/" if path.startswith("/") else ""
    if path.startswith("//") and not path.startswith("///"):
        root = "//"  # POSIX leaves a leading // to the system; pathlib keeps it
    return root + "/".join(part for part in path.split("/") if part and part != ".") or "."


def read(path: str) -> dict[str, dict[str, Any]]:
    """Read and check the configuration at ``path`` (as ``path_text`` prints it).

    A file that does not exist is NotFound; anything wrong inside it is InvalidArgument.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFound(f"{path}: configuration file not found") from None
    except OSError as e:
        raise InvalidArgument(f"{path}: cannot read configuration: {e.strerror or e}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{path}: invalid TOML: not UTF-8 ({e})") from None
    document = _toml_lite.loads(text)
    if document is None:  # more TOML than the plain subset, or no valid TOML at all: tomllib says which
        import tomllib

        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"{path}: invalid TOML: {e}") from None
    return check(document, path)


def check(document: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Every section's values from a parsed file, checked; ``source`` names the file in errors."""
    for name, value in document.items():
        if name not in DEFAULTS:
            raise InvalidArgument(f"{source}: unknown section [{name}]")
        if not isinstance(value, dict):
            raise InvalidArgument(f"{source}: {name} must be a table ([{name}]), not {_toml_type(value)}")

    def section(name: str) -> _Section:
        return _Section(source, name, document.get(name, {}))

    s = section("daemon")
    d = DEFAULTS["daemon"]
    daemon: dict[str, Any] = {
        "root": s.abspath("root", d["root"]),
        "state": s.abspath("state", d["state"]),
        "address": s.socket_path("address", d["address"]),
        "admin_port": s.port("admin_port", d["admin_port"]),
    }

    s = section("runtime")
    r = DEFAULTS["runtime"]
    runtime = {
        "name": s.choice("name", r["name"], RUNTIME_NAMES),
        "binary": s.optional_abspath("binary"),
        "root": s.optional_abspath("root"),
        "shim": s.command("shim", r["shim"]),
        "no_shim": s.boolean("no_shim", r["no_shim"]),
        "shim_debug": s.boolean("shim_debug", r["shim_debug"]),
    }

    s = section("cgroups")
    c = DEFAULTS["cgroups"]
    driver = s.choice("driver", c["driver"], CGROUP_DRIVERS)
    parent = s.string("parent", c["parent"])
    if driver == "cgroupfs" and (not parent.startswith("/") or ".." in parent.split("/")):
        s.fail("parent", f"must be an absolute path without '..' for the cgroupfs driver, not {parent!r}")
    if driver == "systemd" and not parent:
        s.fail("parent", "must name a slice for the systemd driver")
    favor = s.boolean("favor_dynmods", c["favor_dynmods"])
    cgroups = {"driver": driver, "parent": parent, "favor_dynmods": favor}

    s = section("log")
    lg = DEFAULTS["log"]
    log = {
        "format": s.choice("format", lg["format"], LOG_FORMATS),
        "level": s.choice("level", lg["level"], LOG_LEVELS),
        "file": s.optional_abspath("file"),
    }

    s = section("network")
    n = DEFAULTS["network"]
    network = {
        "mode": s.choice("mode", n["mode"], NETWORK_MODES),
        "bridge": s.ifname("bridge", n["bridge"]),
        "subnet": s.subnet("subnet", n["subnet"]),
        "nat": s.boolean("nat", n["nat"]),
    }

    s = section("cluster")
    leaders = s.strings("leaders")
    for leader in leaders:
        s.check_host_port("leaders", leader)
    advertise = s.string("advertise", "") or None
    if advertise is not None:
        s.check_host_port("advertise", advertise)
    cl = DEFAULTS["cluster"]
    labels = []
    for item in s.strings("labels"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            s.fail("labels", f"must be an array of 'key=value' strings, not contain {item!r}")
        labels.append((key, value))
    reregister = s.positive("reregister", cl["reregister"], 3600)
    restart_period = s.positive("restart_period", cl["restart_period"], 3600)
    key_file = s.optional_abspath("key_file")
    cluster = {
        "node": s.string("node", "") or None,
        "leaders": leaders,
        "advertise": advertise,
        "key_file": key_file,
        "labels": tuple(labels),
        "reregister": reregister,
        "miss_max": s.positive("miss_max", cl["miss_max"], 100),
        "restart_period": restart_period,
    }
    if restart_period > reregister:
        # Thespian's member loop sleeps restart_period: longer than reregister, live members get dropped.
        s.fail("restart_period", f"must not be longer than cluster.reregister ({reregister})")
    if leaders and advertise is None:
        s.fail("advertise", "is required when cluster.leaders is set (the address other nodes reach)")
    if leaders and key_file is None:
        s.fail("key_file", "is required when cluster.leaders is set (every node needs the same key)")
    admin_port = daemon["admin_port"]
    if advertise is not None and int(advertise.rpartition(":")[2]) != admin_port:
        s.fail("advertise", f"must use the admin port daemon.admin_port ({admin_port})")

    s = section("gateway")
    g = DEFAULTS["gateway"]
    gateway = {
        "max_frame": s.positive("max_frame", g["max_frame"], 1 << 30),
        "max_connections": s.positive("max_connections", g["max_connections"], 65536),
        "max_backlog": s.positive("max_backlog", g["max_backlog"], 1 << 34),
    }
    s = section("events")
    e = DEFAULTS["events"]
    events = {
        "max_entries": s.positive("max_entries", e["max_entries"], 1 << 40),
        "max_age": s.seconds("max_age", e["max_age"]),
    }
    s = section("restart")
    rs = DEFAULTS["restart"]
    base, cap = s.seconds("base", rs["base"]), s.seconds("cap", rs["cap"])
    restart = {"base": base, "cap": cap, "reset_after": s.seconds("reset_after", rs["reset_after"])}
    if cap < base:
        s.fail("cap", f"must not be less than restart.base ({base})")
    return {
        "daemon": daemon,
        "runtime": runtime,
        "cgroups": cgroups,
        "log": log,
        "network": network,
        "cluster": cluster,
        "gateway": gateway,
        "events": events,
        "restart": restart,
    }


class _Section:
    """Typed reads of one TOML table; every error names ``section.key`` and the file."""

    def __init__(self, source: str, name: str, table: dict[str, Any]) -> None:
        self._source = source
        self._name = name
        self._table = table
        for key in table:
            if key not in DEFAULTS[name]:
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
        value: str = self._typed(key, default, str, "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._typed(key, default, bool, "a boolean")
        return value

    def integer(self, key: str, default: int) -> int:
        value: int = self._typed(key, default, int, "an integer")
        return value

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
        value: list[object] = self._typed(key, [], list, "an array of strings")
        strings: list[str] = []
        for item in value:
            if not isinstance(item, str):
                self.fail(key, f"must be an array of strings, not contain {_toml_type(item)}")
            strings.append(item)
        return tuple(strings)

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in allowed:
            self.fail(key, f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
        return value

    def abspath(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if not value.startswith("/"):
            self.fail(key, f"must be an absolute path, not {value!r}")
        return value

    def optional_abspath(self, key: str) -> str | None:
        if not self.string(key, ""):
            return None
        return self.abspath(key, "")

    def socket_path(self, key: str, default: str) -> str:
        path = self.abspath(key, default)
        if len(os.fsencode(path_text(path))) > _MAX_SOCKET_PATH:
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

    def subnet(self, key: str, default: str) -> str:
        if key not in self._table:
            return default
        import ipaddress

        value = self.string(key, default)
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError as e:
            self.fail(key, f"must be an IPv4 subnet such as '10.88.0.0/16', not {value!r} ({e})")
        if net.prefixlen > 30:
            self.fail(key, f"must leave room for a gateway and containers (/30 or shorter), not {value!r}")
        return value

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
