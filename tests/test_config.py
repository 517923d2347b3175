"""The configuration file: defaults, the shipped file, and every way a file can be wrong."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from pathlib import Path

import pytest

from actors import config
from actors.errdefs import InvalidArgument, NotFound

SHIPPED = Path(__file__).resolve().parent.parent / "conf" / "contactor.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "contactor.toml"
    path.write_text(text)
    return path


def test_load_without_a_file_gives_the_documented_defaults() -> None:
    cfg = config.load(None)

    assert cfg == config.Config()
    assert cfg.daemon.root == Path("/var/lib/contactor")
    assert cfg.daemon.state == Path("/run/contactor")
    assert cfg.daemon.address == Path("/run/contactor/contactor.sock")
    assert cfg.daemon.admin_port == 19320
    assert cfg.runtime.name == "runc"
    assert cfg.runtime.binary is None
    assert cfg.runtime.shim == "contactor-shim"
    assert cfg.runtime.no_shim is False
    assert cfg.runtime.shim_debug is False
    assert cfg.cgroups.driver == "cgroupfs"
    assert cfg.cgroups.parent == "/contactor"
    assert cfg.cgroups.favor_dynmods is True
    assert cfg.log.format == "json"
    assert cfg.log.level == "info"
    assert cfg.log.file is None
    assert cfg.network.mode == "none"
    assert cfg.network.bridge == "contactor0"
    assert cfg.network.subnet == ipaddress.IPv4Network("10.88.0.0/16")
    assert cfg.network.nat is False
    assert cfg.cluster.node is None
    assert cfg.cluster.leaders == ()
    assert cfg.cluster.advertise is None
    assert cfg.cluster.key_file is None
    assert Path("/etc/contactor/contactor.toml") == config.DEFAULT_PATH


def test_shipped_file_loads_and_equals_the_defaults() -> None:
    assert config.load(SHIPPED) == config.load(None)


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "")) == config.Config()


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[runtime]\nname = "crun"\n[daemon]\nadmin_port = 20000\n'))

    assert cfg.runtime.name == "crun"
    assert cfg.daemon.admin_port == 20000
    assert dataclasses.replace(cfg.runtime, name="runc") == config.RuntimeConfig()
    assert cfg.network == config.NetworkConfig()


def test_runtime_root_follows_the_state_dir_unless_configured(tmp_path: Path) -> None:
    derived = config.load(write(tmp_path, '[daemon]\nstate = "/srv/state"\n'))
    explicit = config.load(write(tmp_path, '[runtime]\nroot = "/srv/runc"\n'))

    assert config.Config().runtime_root == Path("/run/contactor/runc")
    assert derived.runtime_root == Path("/srv/state/runc")
    assert explicit.runtime_root == Path("/srv/runc")


def test_runtime_command_is_the_binary_if_given_else_the_name(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[runtime]\nname = "crun"\nbinary = "/opt/crun/bin/crun"\n'))

    assert config.RuntimeConfig().command == "runc"
    assert cfg.runtime.command == "/opt/crun/bin/crun"


def test_cluster_node_defaults_to_the_hostname(tmp_path: Path) -> None:
    named = config.load(
        write(tmp_path, '[cluster]\nnode = "n1"\nleaders = ["10.0.0.1:19320", "[::1]:1900"]\n'
              'advertise = "10.0.0.2:19320"\nkey_file = "/etc/contactor/cluster.key"\n')
    )

    assert config.Config().cluster.node_name == socket.gethostname()
    assert named.cluster.node_name == "n1"
    assert named.cluster.leaders == ("10.0.0.1:19320", "[::1]:1900")
    assert named.cluster.clustered and not named.cluster.is_leader
    assert named.cluster.advertise_host == "10.0.0.2"


def test_cluster_timings_and_labels_are_read(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[cluster]\nreregister = 2\nmiss_max = 4\nrestart_period = 1\n'
                                      'labels = ["zone=a", "disk=ssd"]\n'))  # fmt: skip

    assert (cfg.cluster.reregister, cfg.cluster.miss_max, cfg.cluster.restart_period) == (2, 4, 1)
    assert cfg.cluster.labels == (("zone", "a"), ("disk", "ssd"))


def test_the_checked_choices_are_the_config_types_choices() -> None:
    from typing import get_args

    from actors import _config_file

    assert get_args(config.RuntimeName) == _config_file.RUNTIME_NAMES
    assert get_args(config.CgroupDriver) == _config_file.CGROUP_DRIVERS
    assert get_args(config.LogFormat) == _config_file.LOG_FORMATS
    assert get_args(config.LogLevel) == _config_file.LOG_LEVELS
    assert get_args(config.NetworkMode) == _config_file.NETWORK_MODES


def test_config_values_are_frozen() -> None:
    cfg = config.Config()

    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daemon.admin_port = 1  # type: ignore[misc]


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(NotFound, match=str(missing)):
        config.load(missing)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\n")

    with pytest.raises(InvalidArgument, match=f"{path}: invalid TOML"):
        config.load(path)


# (id, file text, what the one-line message must say)
BAD_FILES = [
    ("unknown-key", '[daemon]\nrooot = "/x"\n', "unknown key daemon.rooot"),
    ("unknown-section", "[deamon]\n", r"unknown section \[deamon\]"),
    ("section-not-a-table", 'daemon = "x"\n', "daemon must be a table"),
    ("enum", '[runtime]\nname = "docker"\n', "runtime.name must be one of 'runc', 'crun'"),
    ("enum-driver", '[cgroups]\ndriver = "cgroupv3"\n', "cgroups.driver must be one of"),
    ("enum-format", '[log]\nformat = "xml"\n', "log.format must be one of"),
    ("enum-level", '[log]\nlevel = "trace"\n', "log.level must be one of"),
    ("enum-mode", '[network]\nmode = "nat"\n', "network.mode must be one of"),
    ("type-nat", '[network]\nnat = "yes"\n', "network.nat must be a boolean, not a string"),
    (
        "type-string-for-int",
        '[daemon]\nadmin_port = "19320"\n',
        "daemon.admin_port must be an integer, not a string",
    ),
    (
        "type-bool-for-int",
        "[daemon]\nadmin_port = true\n",
        "daemon.admin_port must be an integer, not a boolean",
    ),
    (
        "type-string-for-bool",
        '[runtime]\nno_shim = "yes"\n',
        "runtime.no_shim must be a boolean, not a string",
    ),
    ("type-path", "[daemon]\nroot = 1\n", "daemon.root must be a string, not an integer"),
    ("type-array", '[cluster]\nleaders = "a:1"\n', "cluster.leaders must be an array"),
    ("type-array-item", "[cluster]\nleaders = [1]\n", "cluster.leaders must be an array of strings"),
    ("port-zero", "[daemon]\nadmin_port = 0\n", "daemon.admin_port must be a port between 1 and 65535"),
    ("port-too-big", "[daemon]\nadmin_port = 65536\n", "daemon.admin_port must be a port"),
    ("relative-root", '[daemon]\nroot = "var/lib"\n', "daemon.root must be an absolute path"),
    ("empty-state", '[daemon]\nstate = ""\n', "daemon.state must be an absolute path"),
    ("relative-rt-root", '[runtime]\nroot = "runc"\n', "runtime.root must be an absolute path"),
    ("relative-log", '[log]\nfile = "log.txt"\n', "log.file must be an absolute path"),
    ("relative-key", '[cluster]\nkey_file = "k"\n', "cluster.key_file must be an absolute path"),
    (
        "socket-path-too-long",
        f'[daemon]\naddress = "/{"s" * 120}"\n',
        "daemon.address is longer than a unix socket",
    ),
    ("relative-shim", '[runtime]\nshim = "bin/shim"\n', "runtime.shim must be a command name or an absolute"),
    (
        "relative-cgroup-parent",
        '[cgroups]\nparent = "contactor"\n',
        "cgroups.parent must be an absolute path",
    ),
    ("favor-not-bool", '[cgroups]\nfavor_dynmods = "yes"\n', "cgroups.favor_dynmods must be a boolean"),
    ("subnet-host-bits", '[network]\nsubnet = "10.88.0.1/16"\n', "network.subnet must be an IPv4 subnet"),
    ("subnet-junk", '[network]\nsubnet = "banana"\n', "network.subnet must be an IPv4 subnet"),
    ("subnet-tiny", '[network]\nsubnet = "10.0.0.0/31"\n', "network.subnet must leave room"),
    ("bridge-name", '[network]\nbridge = "a-very-long-bridge"\n', "network.bridge must be an interface name"),
    ("leader-no-port", '[cluster]\nleaders = ["host"]\n', "cluster.leaders must be 'host:port'"),
    ("advertise-bad-port", '[cluster]\nadvertise = "h:99999"\n', "cluster.advertise must be 'host:port'"),
    ("restart-over-rereg", "[cluster]\nreregister = 2\nrestart_period = 3\n",
     "cluster.restart_period must not be longer than cluster.reregister"),
    ("rereg-zero", "[cluster]\nreregister = 0\n", "cluster.reregister must be from 1"),
    ("leaders-no-advertise", '[cluster]\nleaders = ["10.0.0.1:1900"]\nkey_file = "/k"\n',
     "cluster.advertise is required"),
    ("leaders-no-key", '[cluster]\nleaders = ["10.0.0.1:1900"]\nadvertise = "10.0.0.2:19320"\n',
     "cluster.key_file is required"),
    ("advertise-other-port", '[cluster]\nadvertise = "10.0.0.2:1"\n', "cluster.advertise must use the admin port"),
    ("label-no-equals", '[cluster]\nlabels = ["zone"]\n', "cluster.labels must be an array of 'key=value'"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(text, expected, id=ident) for ident, text, expected in BAD_FILES]
)
def test_a_bad_value_is_invalid_argument_naming_the_key_and_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(InvalidArgument) as info:
        config.load(path)

    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert re.search(expected, message), message


def test_every_section_of_the_file_is_a_field_of_the_config() -> None:
    from actors import _config_file

    sections = [f.name for f in dataclasses.fields(config.Config)]
    assert list(_config_file.DEFAULTS) == sections
    for name in sections:
        fields = [f.name for f in dataclasses.fields(getattr(config.Config(), name))]
        assert list(_config_file.DEFAULTS[name]) == fields, name


@pytest.mark.parametrize(
    "path", ["/a/b", "/a//b/", "//a", "///a", "/", "//", "///", "a/./b", "./a", "", ".", "..", "a/../b", "/a/./"]
)
def test_path_text_is_what_pathlib_prints(path: str) -> None:
    from actors import _config_file

    assert _config_file.path_text(path) == str(Path(path))
