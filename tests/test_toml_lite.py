"""actors._toml_lite: whatever it reads, it reads as tomllib does; what it does not take, it leaves to tomllib."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import _config_file, _toml_lite

REPO = Path(__file__).resolve().parent.parent


def typed(value: object) -> object:
    """``value`` with every scalar's type beside it: True == 1 and 1 == 1.0 in Python, not in TOML."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def same_as_tomllib(text: str) -> dict[str, object] | None:
    lite = _toml_lite.loads(text)
    if lite is not None:
        assert typed(lite) == typed(tomllib.loads(text)), text
    return lite


KEYS = st.sampled_from(["root", "admin_port", "a-b", "x_1", "9", "a b", '"q"', "a.b", "", "ключ", "k\t"])
STRING_TEXTS = ['"/run/x"', '""', '"a # b"', '"tab\there"', '"é"', '"a\\"b"', '"a\\nb"', '"open', '"a" "b"']
STRINGS = st.sampled_from([*STRING_TEXTS, "'lit'", '"""m"""', '"ctl\x01"'])
NUMBER_TEXTS = ["0", "7", "19320", "007", "1_000", "+1", "-1", "1.5", "0.25", "00.5", "1.", ".5", "1e3", "inf"]
NUMBERS = st.sampled_from([*NUMBER_TEXTS, "nan", "0x1f", "1979-05-27", "604800.0", "12345678901234567890"])
WORDS = st.sampled_from(["true", "false", "True", "yes", "truex", "{}", "{a = 1}"])
ARRAYS = st.builds(
    lambda items, sep, close: "[" + sep.join(items) + close,
    st.lists(st.one_of(STRINGS, NUMBERS), max_size=3),
    st.sampled_from([", ", ",", " , ", " "]),
    st.sampled_from(["]", ",]", " ]", ""]),
)
VALUES = st.one_of(STRINGS, NUMBERS, WORDS, ARRAYS)
AFTER = st.sampled_from(["", " ", "\t", " # note", "# note", " #", ' # "', " x", " = 2", "\x00"])
EQUALS = st.sampled_from([" = ", "=", " =", "  =\t", " : "])
TABLES = st.sampled_from(["daemon", "runtime", "a.b", " daemon ", "[x]", "x]"])
OTHER_LINES = ["", "  ", "# comment", "  # indented", "\ufeff[daemon]", "[[arr]]", "[daemon", "[daemon # ]", "key"]
LINES = st.one_of(
    st.builds(lambda k, eq, v, a: k + eq + v + a, KEYS, EQUALS, VALUES, AFTER),
    st.builds(lambda k, a: f"[{k}]{a}", TABLES, AFTER),
    st.sampled_from([*OTHER_LINES, "\r", "\x7f"]),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(LINES, max_size=8), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_what_it_reads_tomllib_reads_the_same(lines: list[str], newline: str, final: bool) -> None:
    text = newline.join(lines) + (newline if final else "")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert _toml_lite.loads(text) is None, f"read invalid TOML {text!r}"
        return
    same_as_tomllib(text)


def test_the_shipped_configuration_and_the_usual_files_are_read_without_tomllib() -> None:
    files = [
        (REPO / "conf" / "contactor.toml").read_text(),
        '[daemon]\nstate = "/tmp/w/state"\nroot = "/tmp/w/root"\naddress = "/tmp/w/contactor.sock"\n'
        'admin_port = 40123\n[log]\nlevel = "warning"\n',
        '[cluster]\nleaders = ["10.0.0.1:19320", "10.0.0.2:19320"]  # two\nlabels = []\n'
        "[events]\nmax_age = 3600.5\n[runtime]\nno_shim = true\n",
    ]
    for text in files:
        assert same_as_tomllib(text) is not None, text


@pytest.mark.parametrize(
    "text",
    [
        'a = "x"\na = "y"\n',  # a key twice
        "[daemon]\n[daemon]\n",  # a table twice
        'a = "x"\n[a]\n',
        'a = "x\\u0041"\n',  # escapes
        "a = 1_000\n",
        "a = [\n  1,\n]\n",  # arrays over lines
        "a.b = 1\n",
        "a = 1\r\n",
    ],
)
def test_more_than_plain_toml_goes_to_tomllib(text: str) -> None:
    assert _toml_lite.loads(text) is None


def test_a_file_in_fuller_toml_still_reads_and_errors_still_name_the_file(tmp_path: Path) -> None:
    fuller = tmp_path / "fuller.toml"
    fuller.write_text('[daemon]\nadmin_port = 19_321\nstate = "/run/\\u0063t"\n')
    settings = _config_file.read(str(fuller))
    assert settings["daemon"]["admin_port"] == 19321 and settings["daemon"]["state"] == "/run/ct"
    for name, data, words in [
        ("dup.toml", b'[daemon]\nroot = "/a"\nroot = "/b"\n', "invalid TOML"),
        ("latin1.toml", b'[daemon]\nroot = "/caf\xe9"\n', "not UTF-8"),
        ("type.toml", b'[daemon]\nadmin_port = "19320"\n', "daemon.admin_port must be an integer"),
    ]:
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(_config_file.InvalidArgument) as caught:
            _config_file.read(str(bad))
        assert str(bad) in str(caught.value) and words in str(caught.value)
