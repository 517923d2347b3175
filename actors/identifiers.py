"""Validation of ids and namespaces before they touch a path.

The rules are containerd's ``identifiers.Validate``: 1 to 76 characters,
alphanumeric components joined by single ``.``, ``_`` or ``-``.  That excludes
``/``, ``..``, leading dots and everything else that could walk out of a
directory, so a validated name is always a single, safe path component.
"""

from __future__ import annotations

import re

from actors.errdefs import InvalidArgument

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Final

__all__ = ["MAX_LENGTH", "validate", "validate_namespace"]

MAX_LENGTH: Final = 76
_PATTERN: Final = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def validate(value: object, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid identifier, else raise InvalidArgument."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_LENGTH:
        raise InvalidArgument(f"{what} {value[:20]!r}... is longer than {MAX_LENGTH} characters")
    if not _PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r} is invalid: use letters and digits joined by single '.', '_' or '-'"
        )
    return value


def validate_namespace(value: object) -> str:
    """Namespaces follow the same rules as ids (containerd >= 1.4)."""
    return validate(value, "namespace")
