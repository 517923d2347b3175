"""Two costs Thespian's TCP transport pays on every message, removed for every process of the daemon.

Measured on a container's lifecycle (about 50 messages between actors), these
were a tenth of the actors' CPU time:

* **Log text built for logs nobody writes.** Before each send, at each transmit
  and on each receive, Thespian calls ``identify()`` on the intent or envelope to
  pass the result to ``thesplog(..., level=DEBUG)``: that renders the whole
  message with ``str()`` (a TaskSetup holds the configuration and the spec),
  and ``thesplog`` then drops it below its threshold. ``identify`` now returns
  a stand-in whose ``str()`` renders the text, so it is built only if a log line
  is written (``THESPLOG_THRESHOLD=DEBUG`` still shows everything).
* **A new epoll instance per loop.** Each turn of the transport's loop makes a
  ``selectors.DefaultSelector`` (``epoll_create1``), registers every socket with
  one ``epoll_ctl`` each, selects once and closes it: about 130 loops and 750
  ``epoll_ctl`` calls per lifecycle. ``_Poll`` does the same with one ``poll``
  call and no descriptor of its own, and without the selectors module's key
  objects and maps (a message takes about five turns of four descriptors):
  about 5% of a message's CPU, measured between two actors.

``tune`` is called once in the daemon before the actor system starts; the admin
and every actor are forked from there and inherit it.
"""

from __future__ import annotations

import math
import select
import selectors
import types
from typing import Any

__all__ = ["tune"]


class _Lazy:
    """What ``identify()`` returns: the text, made only when something formats it."""

    __slots__ = ("_obj", "_render")

    def __init__(self, render: Any, obj: Any) -> None:
        self._render, self._obj = render, obj

    def __str__(self) -> str:
        return str(self._render(self._obj))

    __repr__ = __str__


class _Key:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


class _Poll:
    """What the transport's loop uses of a selector (register, select, close), over one ``poll``.

    It answers as ``selectors.PollSelector`` does: the same events for the same poll results,
    KeyError for a descriptor registered twice, ValueError for a negative one.
    """

    __slots__ = ("_events", "_poll")

    def __init__(self) -> None:
        self._poll = select.poll()
        self._events: dict[int, int] = {}

    def register(self, fd: int, events: int) -> None:
        if fd in self._events:
            raise KeyError(f"{fd!r} (FD {fd}) is already registered")
        mask = (select.POLLIN if events & selectors.EVENT_READ else 0) | (
            select.POLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._poll.register(fd, mask)
        self._events[fd] = events

    def select(self, timeout: float | None = None) -> list[tuple[_Key, int]]:
        ms = None if timeout is None else 0 if timeout <= 0 else math.ceil(timeout * 1e3)
        ready = []
        for fd, happened in self._poll.poll(ms):
            events = (selectors.EVENT_WRITE if happened & ~select.POLLIN else 0) | (
                selectors.EVENT_READ if happened & ~select.POLLOUT else 0
            )
            ready.append((_Key(fd), events & self._events[fd]))
        return ready

    def close(self) -> None:
        self._events.clear()


def _lazy(render: Any) -> Any:
    def identify(self: Any) -> _Lazy:
        return _Lazy(render, self)

    identify._contactor_lazy = True  # type: ignore[attr-defined]
    return identify


def tune() -> None:
    """Install both changes in this process's Thespian (idempotent)."""
    from thespian.system import transport
    from thespian.system.transport import TCPTransport

    for cls in (transport.TransmitIntent, transport.ReceiveEnvelope):
        if getattr(cls.identify, "_contactor_lazy", False):
            continue
        render = cls.identify
        cls.identify = _lazy(render)
        if cls is transport.ReceiveEnvelope:  # its __str__ returns identify(), and must return a str
            cls.__str__ = lambda self, _render=render: str(_render(self))
    TCPTransport.selectors = types.SimpleNamespace(
        DefaultSelector=_Poll, EVENT_READ=selectors.EVENT_READ, EVENT_WRITE=selectors.EVENT_WRITE
    )
