"""Error categories that survive every boundary.

Every failure contactor reports carries one category (containerd's errdefs):
callers branch on the category, never on message text.  The category crosses
the shim socket, actor messages and the gateway as a plain string and is
turned back into the same exception class on the other side; the CLI maps each
one to its own exit code.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import ClassVar, Final


__all__ = [
    "ContactorError",
    "NotFound",
    "AlreadyExists",
    "InvalidArgument",
    "FailedPrecondition",
    "Unavailable",
    "Internal",
    "CATEGORIES",
    "EXIT_CODES",
    "from_category",
]


class ContactorError(Exception):
    """Base of every categorized error; ``category`` names the kind."""

    category: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"category": self.category, "message": self.message}


class NotFound(ContactorError):
    category = "not_found"


class AlreadyExists(ContactorError):
    category = "already_exists"


class InvalidArgument(ContactorError):
    category = "invalid_argument"


class FailedPrecondition(ContactorError):
    category = "failed_precondition"


class Unavailable(ContactorError):
    category = "unavailable"


class Internal(ContactorError):
    category = "internal"


CATEGORIES: Final[dict[str, type[ContactorError]]] = {
    cls.category: cls
    for cls in (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, Unavailable, Internal)
}

# One exit code per category.  They sit in 120-125, clear of 0-2 (success, failure, usage) and of the
# statuses containers commonly exit with, because `contactor run` passes the container's status through.
EXIT_CODES: Final[dict[str, int]] = {
    "invalid_argument": 120,
    "not_found": 121,
    "already_exists": 122,
    "failed_precondition": 123,
    "unavailable": 124,
    "internal": 125,
}


def from_category(category: str, message: str) -> ContactorError:
    """Rebuild the exception for a category received over a wire; unknown ones become Internal."""
    cls = CATEGORIES.get(category)
    if cls is None:
        return Internal(f"{message} (unknown error category {category!r})")
    return cls(message)
