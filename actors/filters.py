"""containerd's filter syntax: parsed once, matched against envelopes and container records.

A filter string is a comma-separated list of selectors that must all match
(AND); several filter strings are alternatives (OR).  A selector names a
field path into a nested mapping and, optionally, an operator and a value::

    topic=="/tasks/exit"
    namespace==default,topic~="^/tasks/"
    event.container_id==c1
    labels."io.example.role"!=db
    labels.app                      # the field is present

Operators: ``==``, ``!=`` (also true when the field is absent) and ``~=``
(``re.search``, unanchored).  Values are ``[^\\s,]+`` or double-quoted with
Go's backslash escapes; a ``~=`` value may also be quoted ``/.../`` or
``|...|``, where the backslash only escapes the quote character and every other
escape reaches the regular expression untouched.  A value that starts with
``/`` or ``|`` is a quote, as in containerd, so plain ``topic==/tasks/exit`` is
refused with a hint to double-quote it.

Only string values are compared: a path that ends at a number, a mapping or
nothing at all counts as absent (containerd cannot filter on a pid either).
A ``Filter`` pickles as its source strings and is parsed again on arrival, so
it travels in actor messages and is validated wherever it lands.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors.errdefs import InvalidArgument

__all__ = ["Filter", "FilterSyntaxError", "Selector", "Op", "parse", "parse_any"]


class FilterSyntaxError(InvalidArgument):
    """A filter that does not parse (or whose regular expression does not compile).

    ``position`` is the 0-based offset in ``source`` where the problem was found.
    """

    def __init__(self, source: str, position: int, reason: str) -> None:
        super().__init__(f"invalid filter {source!r} at position {position}: {reason}")
        self.source = source
        self.position = position
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.position, self.reason))


class Op(enum.Enum):
    PRESENT = ""
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True, slots=True)
class Selector:
    """One ``fieldpath [op value]`` term of a filter."""

    path: tuple[str, ...]
    op: Op
    value: str = ""
    pattern: re.Pattern[str] | None = None

    def match(self, obj: Mapping[str, Any]) -> bool:
        found = _lookup(obj, self.path)
        if self.op is Op.PRESENT:
            return found is not None
        if self.op is Op.NOT_EQUAL:
            return found != self.value
        if found is None:
            return False
        if self.op is Op.EQUAL:
            return found == self.value
        assert self.pattern is not None
        return self.pattern.search(found) is not None


def _lookup(obj: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The string at ``path`` in nested mappings, or None when absent or not a string."""
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current if isinstance(current, str) else None


class Filter:
    """Alternatives (OR) of conjunctions (AND) of selectors; build it with ``parse``/``parse_any``.

    An empty conjunction matches everything, and so does a filter with no
    alternatives at all (no filter means "all", as in containerd).
    """

    __slots__ = ("_alternatives", "_sources")

    def __init__(self, sources: tuple[str, ...], alternatives: tuple[tuple[Selector, ...], ...]) -> None:
        self._sources = sources
        self._alternatives = alternatives

    @property
    def sources(self) -> tuple[str, ...]:
        """The filter strings this filter was parsed from."""
        return self._sources

    @property
    def alternatives(self) -> tuple[tuple[Selector, ...], ...]:
        """The parsed form: one conjunction of selectors per source string."""
        return self._alternatives

    @property
    def matches_all(self) -> bool:
        return not self._alternatives or any(not conj for conj in self._alternatives)

    def match(self, obj: Mapping[str, Any]) -> bool:
        if not self._alternatives:
            return True
        return any(all(sel.match(obj) for sel in conj) for conj in self._alternatives)

    # Pickled as the source strings and parsed again when loaded: the compiled
    # form never needs to be trusted, and only ``parse_any`` must be importable.
    def __reduce__(self) -> tuple[Any, ...]:
        return (parse_any, (self._sources,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other._sources == self._sources

    def __hash__(self) -> int:
        return hash(self._sources)

    def __repr__(self) -> str:
        return f"Filter({list(self._sources)!r})"


def parse(filter_str: str) -> Filter:
    """Parse one filter string (selectors joined by ',' = AND); "" matches everything."""
    return Filter((filter_str,), (_Parser(filter_str).conjunction(),))


def parse_any(filters: Sequence[str]) -> Filter:
    """Parse several filter strings into one filter matching any of them; none matches everything."""
    if isinstance(filters, str):
        raise InvalidArgument("filters must be a sequence of filter strings, not one string")
    sources = tuple(filters)
    for source in sources:
        if not isinstance(source, str):
            raise InvalidArgument(f"a filter must be a string, not {type(source).__name__}")
    return Filter(sources, tuple(_Parser(source).conjunction() for source in sources))


# -- the parser -----------------------------------------------------------------------------------------

_FIELD: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_BARE_VALUE: Final = re.compile(r"[^\s,]+")
_OPERATORS: Final = {op.value: op for op in Op if op is not Op.PRESENT}
_SIMPLE_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
}  # fmt: skip
_HEX_ESCAPES: Final = {"x": 2, "u": 4, "U": 8}


class _Parser:
    """Recursive descent over one filter string; whitespace is allowed between tokens."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0

    def error(self, reason: str, position: int | None = None) -> FilterSyntaxError:
        return FilterSyntaxError(self.src, self.pos if position is None else position, reason)

    def peek(self) -> str:
        """The next character after any whitespace ("" at the end); the position moves past the space."""
        while self.pos < len(self.src) and self.src[self.pos].isspace():
            self.pos += 1
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def conjunction(self) -> tuple[Selector, ...]:
        if self.src == "":
            return ()
        selectors = [self.selector()]
        while (ch := self.peek()) == ",":
            self.pos += 1
            selectors.append(self.selector())
        if ch:
            raise self.error(f"unexpected {ch!r}: expected ',' or the end of the filter")
        return tuple(selectors)

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        ch = self.peek()
        if ch in ("", ","):
            return Selector(tuple(path), Op.PRESENT)
        op = _OPERATORS.get(self.src[self.pos : self.pos + 2])
        if op is None:
            raise self.error(f"unexpected {ch!r}: expected an operator ('==', '!=' or '~='), ',' or the end")
        self.pos += 2
        self.peek()
        start = self.pos
        value = self.value(op)
        if op is not Op.MATCHES:
            return Selector(tuple(path), op, value)
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise self.error(f"invalid regular expression {value!r}: {exc.msg}", start) from None
        return Selector(tuple(path), op, value, pattern)

    def field(self) -> str:
        ch = self.peek()
        if ch == '"':
            return self.quoted('"')
        found = _FIELD.match(self.src, self.pos)
        if found is None:
            found_what = repr(ch) if ch else "the end"
            raise self.error(
                f"expected a field name (a letter, or a double-quoted string), found {found_what}"
            )
        self.pos = found.end()
        return found.group()

    def value(self, op: Op) -> str:
        ch = self.peek()
        if ch in ("", ","):
            raise self.error(f"expected a value after {op.value!r}")
        if ch == '"':
            return self.quoted('"')
        if ch in "/|":
            if op is not Op.MATCHES:
                raise self.error(f"a value starting with {ch!r} is a quote, allowed only after '~=': "
                                 f"double-quote it, e.g. topic==\"/tasks/exit\"")  # fmt: skip
            return self.quoted(ch)
        found = _BARE_VALUE.match(self.src, self.pos)
        assert found is not None  # ch is neither space nor ','
        self.pos = found.end()
        return found.group()

    def quoted(self, quote: str) -> str:
        """The string quoted by ``quote`` at the current position, unescaped; moves past the closing quote."""
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.src):
            ch = self.src[self.pos]
            if ch == quote:
                self.pos += 1
                return "".join(out)
            if ch == "\n":
                raise self.error("newline inside a quoted string")
            if ch != "\\":
                out.append(ch)
                self.pos += 1
            elif quote == '"':
                out.append(self.escape())
            else:
                # /.../ and |...| hold regular expressions: only the quote itself is
                # escaped; every other escape is the regular expression's own.
                nxt = self.src[self.pos + 1 : self.pos + 2]
                out.append(nxt if nxt == quote else "\\" + nxt)
                self.pos += 2
        raise self.error(f"unterminated quoted string (no closing {quote!r})", start)

    def escape(self) -> str:
        """Decode one Go string escape at the current position (a backslash)."""
        start = self.pos
        kind = self.src[start + 1 : start + 2]
        if kind in _SIMPLE_ESCAPES:
            self.pos = start + 2
            return _SIMPLE_ESCAPES[kind]
        if kind in _HEX_ESCAPES:
            width = _HEX_ESCAPES[kind]
            end, base = start + 2 + width, 16
            digits = self.src[start + 2 : end]
            if len(digits) != width or not all(c in string.hexdigits for c in digits):
                raise self.error(f"\\{kind} needs {width} hexadecimal digits", start)
        elif kind and kind in string.octdigits:
            end, base = start + 4, 8
            digits = self.src[start + 1 : end]
            if len(digits) != 3 or not all(c in string.octdigits for c in digits) or int(digits, 8) > 0o377:
                raise self.error("an octal escape needs three octal digits, at most \\377", start)
        else:
            raise self.error(f"unknown escape sequence \\{kind}" if kind else "a trailing backslash", start)
        self.pos = end
        code = int(digits, base)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise self.error(f"escape {self.src[start : self.pos]!r} is not a valid character", start)
        return chr(code)
