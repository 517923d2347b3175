"""Costs Thespian's TCP transport pays on every message, removed for every process of the daemon.

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

* **Turns of the loop spent on a part of a message.** Each turn of the loop
  re-derives its poll set and deadlines from every pending transmit and socket,
  so its cost grows with the work in flight. Thespian took six turns per
  message at each end of a request and its answer: a receive reads the 20-byte
  head of a message in one turn and the rest in the next; the ACK (21 bytes)
  arrives the same way, 20 bytes and then 1; and a send that has written its
  last byte waits one more turn (for the socket to be writable again) before it
  starts waiting for its ACK. Now a read goes on while the socket has data and
  the message is not whole, and a finished send waits for its ACK in the same
  turn: two turns per message. Measured between two actors: CPU per request
  and answer fell from about 800 µs to 430-490 µs; with 20 requests in flight to
  4 actors, from 810-910 to 380-390 µs of CPU and from about 500 to 200-250 µs
  of wall time per request.
* **A message deserialized twice.** A message that arrives on a socket while
  its actor waits there for the ACK of its own send (a request and its answer
  often cross on one socket) was unpickled once to see that it is not the ACK,
  then again to be received: a fifth of a TaskHost's CPU. A receive buffer now
  keeps what it deserialized.
* **Helpers that cost more than what they do.** ``partition`` (a fold over
  lambdas), ``fmap`` (recursive, with ``functools.partial``),
  ``exclusive_processing`` (a generator context manager) and
  ``TransmitIntent.delay`` (three timer views and timedeltas) run for every
  pending transmit on every turn; plain loops and float arithmetic give the
  same results.

* **Python's frame stack torn down and made again on every turn.** CPython 3.11
  keeps a thread's frames in 16 KiB chunks; it allocates a chunk (``mmap``) when
  a call does not fit in the current one and frees it (``munmap``) when that
  call returns (CPython issue 142183, fixed from 3.13). An actor process is
  forked from deep inside its parent's stack, so its loop can run right at a
  chunk's edge: a TaskHost mapped and unmapped a chunk about 300 times a
  lifecycle, each ``munmap`` a TLB shoot-down across the host's threads. Every
  actor's process now runs in a frame that takes a fresh chunk of its own
  (``_in_own_chunk``), with room for its loop's calls after it.

``tune`` is called once in the daemon before the actor system starts; the admin
and every actor are forked from there and inherit it.
"""

from __future__ import annotations

import math
import select
import selectors
import time
import types
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, Final

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


def _readable(sock: Any) -> bool:
    """Whether ``sock`` has data (or EOF) to read now, without waiting."""
    try:
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN)
        return bool(poll.poll(0))
    except (OSError, ValueError):
        return False


def _partition(test: Callable[[Any], Any], items: Iterable[Any], output_type: Any = list) -> tuple[Any, Any]:
    """thespian.system.utilis.partition: (the items that pass ``test``, the rest), in order."""
    passed, failed = output_type(), output_type()
    for item in items:
        (passed if test(item) else failed).append(item)
    return passed, failed


def _fmap(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """thespian.system.utilis.fmap for the tuples and lists the loop passes; anything else goes to ``original``."""

    def fmap(func: Callable[[Any], Any], obj: Any) -> Any:
        kind = type(obj)
        if kind is tuple:
            return tuple(fmap(func, item) for item in obj)
        if kind is list:
            return [fmap(func, item) for item in obj]
        return original(func, obj)

    return fmap


class _Exclusive:
    """thespian's ``exclusive_processing(transport)``: spin until this thread holds the transport's
    processing flag, release it on a normal exit (and, like the original, not after an exception)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def __enter__(self) -> None:
        while not self._transport._exclusively_processing():
            time.sleep(0.000001)

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            self._transport._not_processing()


_ZERO = timedelta(0)
_TEN_MS = timedelta(milliseconds=10)


def _delay(original: Callable[..., Any], now: Callable[[], float]) -> Callable[..., Any]:
    """TransmitIntent.delay on the timers' deadlines (floats): the same timedelta, without the views
    (a timer without a deadline, which Thespian never gives a transmit, goes to ``original``)."""

    def delay(self: Any, current_time: float | None = None) -> Any:
        ct = current_time or now()
        quit_at = self._quitTime._time_to_quit
        if getattr(self, "_awaitingTXSlot", False):
            if quit_at is None:
                return original(self, current_time)
            if ct >= quit_at:
                return _ZERO
            return max(_TEN_MS, timedelta(seconds=quit_at - ct) / 2)
        retry_at = getattr(self, "_retryTime", self._quitTime)._time_to_quit
        pause_at = getattr(self, "_pauseUntil", self._quitTime)._time_to_quit
        if quit_at is None or retry_at is None or pause_at is None:
            return original(self, current_time)
        return timedelta(seconds=max(min(quit_at, retry_at, pause_at) - ct, 0))

    delay._contactor_tuned = True  # type: ignore[attr-defined]
    delay._thespian = original  # type: ignore[attr-defined]
    return delay


def _completed_once(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """ReceiveBuffer.completed, deserializing the packet once however often it is asked (its bytes
    do not change once it is whole: more data goes to its extra)."""

    def completed(self: Any) -> Any:
        got = self.__dict__.get("_contactor_packet")
        if got is None:
            done = original(self)
            if done is None:
                return None
            got = self._contactor_packet = (done[0],)
        return got[0], self._extra

    completed._contactor_tuned = True  # type: ignore[attr-defined]
    return completed


def _whole_reads_and_sends(cls: Any) -> None:
    """Receive a message or an ACK whole while its bytes are there; wait for the ACK right after the send."""
    receive, ack, send = cls._handleReadableIncoming, cls._next_XMIT_4, cls._next_XMIT_2

    def _handleReadableIncoming(self: Any, inc: Any, has_exclusive_flag: bool = False) -> Any:
        got = receive(self, inc, has_exclusive_flag=has_exclusive_flag)
        while got is inc and inc.socket is not None and not inc.receivedAllData() and _readable(inc.socket):
            got = receive(self, inc, has_exclusive_flag=has_exclusive_flag)
        return got

    def _next_XMIT_4(self: Any, intent: Any) -> Any:
        going = ack(self, intent)
        while (going is True and intent.stage == cls._XMITStepWaitForAck
               and getattr(intent, "socket", None) is not None and getattr(intent, "ackbuf", None) is not None
               and not intent.ackbuf.isDone() and _readable(intent.socket)):  # fmt: skip
            going = ack(self, intent)
        return going

    def _next_XMIT_2(self: Any, intent: Any) -> Any:
        going = send(self, intent)
        if going is True and intent.stage == cls._XMITStepShutdownWrite:
            return self._nextTransmitStep(intent)  # on to waiting for the ACK, in this turn
        return going

    cls._handleReadableIncoming = _handleReadableIncoming
    cls._next_XMIT_4 = _next_XMIT_4
    cls._next_XMIT_2 = _next_XMIT_2
    cls._contactor_whole = True


# Slots of evaluation stack given to ``_in_own_chunk``'s frame: 32 KiB, more than any chunk has left,
# so the frame starts a new chunk (64 KiB: chunks grow by doubling), and the 30 KiB after it hold an
# actor loop's deepest calls. The slots are never written, so the pages they span are never touched.
_OWN_CHUNK_SLOTS: Final = 4096


def _in_own_chunk(run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``run(*args, **kwargs)`` called from a frame at the start of a data-stack chunk of its own."""
    return run(*args, **kwargs)


_in_own_chunk.__code__ = _in_own_chunk.__code__.replace(
    co_stacksize=_in_own_chunk.__code__.co_stacksize + _OWN_CHUNK_SLOTS
)


def _own_chunk(start_child: Callable[..., Any]) -> Callable[..., Any]:
    def startChild(*args: Any, **kwargs: Any) -> Any:
        return _in_own_chunk(start_child, *args, **kwargs)

    startChild._contactor_tuned = True  # type: ignore[attr-defined]
    startChild._thespian = start_child  # type: ignore[attr-defined]
    return startChild


def tune() -> None:
    """Install the changes in this process's Thespian (idempotent)."""
    from thespian.system import multiprocCommon, timing, transport, utilis
    from thespian.system.transport import TCPTransport, asyncTransportBase, streamBuffer

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
    if not getattr(TCPTransport.TCPTransport, "_contactor_whole", False):
        _whole_reads_and_sends(TCPTransport.TCPTransport)
    TCPTransport.partition = _partition
    TCPTransport.fmap = _fmap(utilis.fmap)
    TCPTransport.exclusive_processing = asyncTransportBase.exclusive_processing = _Exclusive
    if not getattr(streamBuffer.ReceiveBuffer.completed, "_contactor_tuned", False):
        streamBuffer.ReceiveBuffer.completed = _completed_once(streamBuffer.ReceiveBuffer.completed)
    if not getattr(transport.TransmitIntent.delay, "_contactor_tuned", False):
        transport.TransmitIntent.delay = _delay(transport.TransmitIntent.delay, timing.currentTime)
    if not getattr(multiprocCommon.startChild, "_contactor_tuned", False):
        multiprocCommon.startChild = _own_chunk(multiprocCommon.startChild)
