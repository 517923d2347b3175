"""`contactor run`: output, exit status passed through, one-line errors with their own exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, remove_cgroups

from actors.errdefs import EXIT_CODES


@pytest.fixture
def cli_config(tmp_path: Path, namespace: str) -> Path:
    conf = tmp_path / "contactor.toml"
    state, root = tmp_path / "state", tmp_path / "root"
    conf.write_text(f'[daemon]\nstate = "{state}"\nroot = "{root}"\n')
    return conf


def contactor(conf: Path, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", "--config", str(conf), "--namespace", ns, *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_run_rm_prints_output_passes_status_and_leaves_nothing(
    cli_config: Path, namespace: str, rootfs: Path, runtime: str
) -> None:
    result = contactor(cli_config, namespace, "run", "--rm", "--runtime", runtime, "--rootfs", str(rootfs),
                       "c1", "/bin/sh", "-c", "echo out; echo err >&2; hostname; exit 42")  # fmt: skip
    assert result.returncode == 42, result.stderr
    assert result.stdout == "out\nc1\n"
    assert result.stderr == "err\n"
    state = cli_config.parent / "state"
    assert not (state / namespace / "c1").exists()
    assert not list(Path("/sys/fs/cgroup/memory/contactor").glob(f"{namespace}*"))
    remove_cgroups(namespace)


@pytest.mark.parametrize(
    ("args", "category", "needle"),
    [
        (
            ["run", "--rm", "--rootfs", "{rootfs}", "../escape", "/bin/true"],
            "invalid_argument",
            "container id",
        ),
        (["run", "--rm", "--rootfs", "/no/such/rootfs", "c1", "/bin/true"], "invalid_argument", "rootfs"),
        (
            ["run", "--rm", "--rootfs", "{rootfs}", "c1", "/no/such/binary"],
            "invalid_argument",
            "no such file",
        ),
        (["run", "--rm", "--rootfs", "{rootfs}", "c1"], "invalid_argument", "command"),
    ],
)
def test_errors_are_one_line_with_the_category_exit_code(
    cli_config: Path, namespace: str, rootfs: Path, args: list[str], category: str, needle: str
) -> None:
    result = contactor(cli_config, namespace, *[a.replace("{rootfs}", str(rootfs)) for a in args])
    assert result.returncode == EXIT_CODES[category], result.stderr
    # Our own error is one line; the runtime's own complaint may precede it on the container's stderr.
    ours = [line for line in result.stderr.splitlines() if line.startswith("contactor: ")]
    assert len(ours) == 1 and needle in ours[0].lower(), result.stderr
    assert not list((cli_config.parent / "state").glob(f"{namespace}/*"))


def test_bad_config_names_the_key_and_file(tmp_path: Path, namespace: str, rootfs: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('[runtime]\nname = "docker"\n')
    result = contactor(conf, namespace, "run", "--rootfs", str(rootfs), "c1", "/bin/true")
    assert result.returncode == EXIT_CODES["invalid_argument"]
    assert "runtime.name" in result.stderr and str(conf) in result.stderr
