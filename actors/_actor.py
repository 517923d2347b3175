"""The base every contactor actor derives from: dispatch by type, errors as replies, watches kept.

Thespian calls ``receiveMessage`` for everything; this base routes a message
to ``on_<ClassName>(msg, sender)`` (a table built once per class), answers an
``Ask`` whose handler raised with an ``ErrorReply`` instead of letting Thespian
retry and poison it, and always returns the actor's current ``ThespianWatch``
(a handler that returned None would silently drop every watched fd).
"""

from __future__ import annotations

import os
import traceback
from typing import Any, ClassVar

from thespian.actors import Actor, ActorExitRequest, ThespianWatch

from actors.errdefs import ContactorError
from actors.logs import get_logger
from actors.messages import Answer, Ask, Batch, ErrorReply

__all__ = ["ContactorActor", "error_reply"]


def error_reply(exc: BaseException) -> ErrorReply:
    if isinstance(exc, ContactorError):
        return ErrorReply(exc.category, exc.message)
    return ErrorReply("internal", f"{type(exc).__name__}: {exc}")


class ContactorActor(Actor):  # type: ignore[misc]
    role: ClassVar[str] = "actor"
    _table: ClassVar[dict[type, str]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watched: list[int] = []
        self.log = get_logger(actor=self.role)
        self.exiting = False  # an ActorExitRequest came: what follows (children's exits) is the shutdown

    def receiveMessage(self, msg: Any, sender: Any) -> ThespianWatch | None:
        handler = getattr(self, f"on_{type(msg).__name__}", None)
        if isinstance(msg, ActorExitRequest):
            self._exit(msg, sender, handler)
            return None
        try:
            if handler is not None:
                handler(msg, sender)
            else:
                self.unhandled(msg, sender)
        except Exception as exc:
            self.log.error("handler_failed", message=type(msg).__name__, error=repr(exc),
                           exception=traceback.format_exc())  # fmt: skip
            if isinstance(msg, Ask):
                self.answer(msg, sender, error_reply(exc))
        return ThespianWatch(list(self.watched)) if self.watched else None

    def _exit(self, msg: Any, sender: Any, handler: Any) -> None:
        """Run the exit handler, then keep every fd of the last watch list a valid, idle one.

        Thespian does not take the watch list of an ActorExitRequest's handler: it keeps
        polling the previous one while it drains its sends, and a closed fd whose number
        was reused (by its own epoll instance) makes that poll fail.
        """
        watched = list(self.watched)
        self.exiting = True
        try:
            if handler is not None:
                handler(msg, sender)
        except Exception as exc:
            self.log.error("handler_failed", message="ActorExitRequest", error=repr(exc))
        idle = None
        for fd in watched:
            try:
                os.fstat(fd)
            except OSError:
                if idle is None:
                    idle, _ = os.pipe()  # a read end nobody writes to: never ready
                os.dup2(idle, fd)

    def on_Batch(self, msg: Batch, sender: Any) -> None:
        for each in msg.messages:
            self.receiveMessage(each, sender)

    def unhandled(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Ask):
            handler = getattr(self, f"ask_{type(msg.body).__name__}", None)
            if handler is None:
                self.answer(msg, sender, ErrorReply("invalid_argument", f"{self.role} does not handle "
                                                     f"{type(msg.body).__name__}"))  # fmt: skip
                return
            try:
                self.answer(msg, sender, handler(msg.body, msg, sender))
            except Exception as exc:
                if not isinstance(exc, ContactorError):
                    self.log.error("request_failed", request=type(msg.body).__name__, error=repr(exc),
                                   exception=traceback.format_exc())  # fmt: skip
                self.answer(msg, sender, error_reply(exc))

    def answer(self, ask: Ask, sender: Any, body: Any) -> None:
        """Reply to an Ask (to whoever it names, else its sender); None means "answered later"."""
        if body is not None:
            self.send(ask.reply_to or sender, Answer(ask.corr, body))
