"""A reader for the plain TOML that configuration files are written in, without importing tomllib.

``loads(text)`` returns what ``tomllib.loads(text)`` would, or None when the text
uses anything past this subset; the caller then parses it with tomllib, which
also reports errors.  Importing tomllib (with typing, string and its compiled
patterns) costs the command line about 6 ms of a 45 ms command.

The subset, one item a line: blank lines, ``# comments``, ``[table]`` headers,
and ``key = value`` where a key is bare (ASCII letters, digits, ``_``, ``-``) and
a value is a basic string without escapes, a decimal integer, a float written
``digits.digits``, ``true``, ``false``, or a one-line array of such strings.  A
value may be followed by a comment.  A key or table given twice is left to
tomllib (an error there).
"""

from __future__ import annotations

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")


class _Outside(Exception):
    """The text uses more TOML than this reader takes."""


def loads(text: str) -> dict[str, object] | None:
    """The document ``text`` holds, or None for text outside the subset (valid TOML or not)."""
    if "\r" in text or "\x7f" in text:
        return None
    try:
        return _parse(text)
    except _Outside:
        return None


def _parse(text: str) -> dict[str, object]:
    document: dict[str, object] = {}
    table = document
    for raw in text.split("\n"):
        line = raw.strip(" \t")
        if any(ch < " " and ch != "\t" for ch in line):
            raise _Outside
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            name, closed, rest = line[1:].partition("]")
            if not closed or not _bare(name) or name in document or not _comment(rest):
                raise _Outside
            table = {}
            document[name] = table
            continue
        key, eq, rest = line.partition("=")
        key = key.rstrip(" \t")
        if not eq or not _bare(key) or key in table:
            raise _Outside
        table[key] = _value(rest.lstrip(" \t"))
    return document


def _bare(key: str) -> bool:
    return bool(key) and all(ch in _BARE for ch in key)


def _comment(rest: str) -> bool:
    """Whether what follows a value is nothing or a comment."""
    rest = rest.lstrip(" \t")
    return not rest or rest[0] == "#"


def _value(text: str) -> object:
    value: object
    if text.startswith('"'):
        value, rest = _string(text)
    elif text.startswith("["):
        value, rest = _array(text[1:])
    else:
        word, hash_, after = text.partition("#")
        rest = hash_ + after
        value = _scalar(word.rstrip(" \t"))
    if not _comment(rest):
        raise _Outside
    return value


def _string(text: str) -> tuple[str, str]:
    """A basic string at the start of ``text`` (its opening quote included), and what follows it."""
    end = text.find('"', 1)
    if end < 0 or "\\" in text[1:end]:
        raise _Outside
    return text[1:end], text[end + 1 :]


def _array(text: str) -> tuple[list[object], str]:
    """A one-line array of strings after its ``[``, and what follows its ``]``."""
    items: list[object] = []
    text = text.lstrip(" \t")
    if text.startswith("]"):
        return items, text[1:]
    while True:
        if not text.startswith('"'):
            raise _Outside
        item, text = _string(text)
        items.append(item)
        text = text.lstrip(" \t")
        if text.startswith("]"):
            return items, text[1:]
        if not text.startswith(","):
            raise _Outside
        text = text[1:].lstrip(" \t")


def _scalar(word: str) -> object:
    if word == "true":
        return True
    if word == "false":
        return False
    whole, dot, fraction = word.partition(".")
    if not _decimal(whole) or (dot and not (fraction and set(fraction) <= _DIGITS)):
        raise _Outside
    return float(word) if dot else int(word)


def _decimal(digits: str) -> bool:
    """ASCII digits without a leading zero (TOML forbids one), or 0."""
    return bool(digits) and set(digits) <= _DIGITS and (digits == "0" or digits[0] != "0")
