"""TaskHost: the process that runs TaskActors, each on a thread of its own.

A TaskActor is still one actor per container, with its own mailbox, handled one
message at a time on its own thread (so a shim call that blocks holds up only
its own task). What changed is where it lives: an OS process per TaskActor cost
every container about 7 MB of private memory and 10 ms of CPU for the fork and
Thespian's start and stop of a child, and made a daemon restart fork one
process per running container. A host runs up to ``TASKS_PER_HOST`` of them;
the RuntimeActor starts hosts as they fill and keeps one warm, so creating a
task forks nothing.

The host is the Thespian actor; its TaskActors never touch Thespian. Each has a
stand-in for Thespian's actor reference (``_Ref``): what it sends and the
wake-ups it asks for go to the host's outbox, which the host's own thread sends
in order (it is poked through an eventfd it watches). Messages for a task carry
its identity (TaskSetup, Ask(TaskRequest), Committed by its event key; Peers go
to all), and the host puts them in that task's mailbox. The fds a TaskActor
watches are watched by the host and handed to it as a ``WatchMessage``; a task
busy with a message has its fds left out of the watch until it is done, as
Thespian does for an actor, so a ready fd is handed over once.

A task that leaves (``ActorExitRequest`` to itself) ends its thread. If the host
dies, every task in it is restored in another host by the RuntimeActor, as
when a TaskActor process died: the shims and containers do not notice.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import queue
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Final

from thespian.actors import ActorExitRequest, ThespianWatch, WakeupMessage, WatchMessage

from actors._actor import ContactorActor
from actors.errdefs import Unavailable
from actors.ksm import mark_mergeable
from actors.messages import Answer, Ask, Batch, Committed, ErrorReply, Peers, TaskRequest, TaskSetup
from actors.task import TaskActor

__all__ = ["TaskHost", "TASKS_PER_HOST"]

TASKS_PER_HOST: Final = 32
# How long a stopping host waits for its TaskActors to let go of their shims.
EXIT_WAIT: Final = 2.0
PR_SET_PDEATHSIG: Final = 1
M_ARENA_MAX: Final = -8


def _die_with_parent() -> None:
    """A host dies with its RuntimeActor: the new RuntimeActor restores every task from its
    bundle, and an orphaned host beside it would publish every event twice."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    # Each thread would get a malloc arena of its own (64 MB reserved, some of it touched):
    # the host's threads share two.
    libc.mallopt(M_ARENA_MAX, 2)


class _Ref:
    """What a hosted TaskActor has in place of Thespian's actor reference."""

    def __init__(self, host: TaskHost, hosted: _Hosted) -> None:
        self.host, self.hosted = host, hosted

    @property
    def address(self) -> Any:
        return self.host.myAddress

    @property
    def globalName(self) -> None:
        return None

    def actor_send(self, target: Any, msg: Any) -> None:
        if target == self.host.myAddress:  # to itself (its own ActorExitRequest)
            self.host.deliver(self.hosted, msg, target)
            return
        self.host.post(("send", target, msg))

    def wakeupAfter(self, period: Any, payload: Any = None) -> None:
        self.host.post(("wakeup", period, ("task", self.hosted.key, self.hosted.serial, payload)))

    def __getattr__(self, name: str) -> Any:
        raise Unavailable(f"a hosted TaskActor cannot {name}")


@dataclass(eq=False)
class _Hosted:
    key: tuple[str, str]
    serial: int
    actor: Any = None
    mailbox: queue.SimpleQueue[tuple[Any, Any]] = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None
    pending: int = 0  # messages in its mailbox or being handled (under the host's lock)
    gone: bool = False


class TaskHost(ContactorActor):
    role = "task-host"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _die_with_parent()
        mark_mergeable()  # most of our private pages are copies of the RuntimeActor's: see actors.ksm
        # Everything inherited from the RuntimeActor lives as long as we do: out of the collector's
        # reach, or the first full collection writes to every object and makes its page our own copy.
        gc.freeze()
        self.lock = threading.Lock()
        self.outbox: list[tuple[Any, ...]] = []
        self.poke_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.tasks: dict[tuple[str, str], _Hosted] = {}  # the current TaskActor of each task here
        self.leaving: set[_Hosted] = set()  # replaced or stopping, still finishing a message
        self.serials = 0
        self.fd_owner: dict[int, _Hosted] = {}
        self.watched = [self.poke_fd]

    # -- what hosted TaskActors use (any thread) ------------------------------------------------------------
    def post(self, item: tuple[Any, ...]) -> None:
        with self.lock:
            self.outbox.append(item)
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(self.poke_fd, 1)

    def deliver(self, hosted: _Hosted, msg: Any, sender: Any) -> None:
        """Into ``hosted``'s mailbox; it counts as busy (its fds unwatched) until it has handled it."""
        with self.lock:
            hosted.pending += 1
        hosted.mailbox.put((msg, sender))

    # -- the host's own thread ----------------------------------------------------------------------------
    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        watch = super().receiveMessage(msg, sender)
        if isinstance(msg, ActorExitRequest):
            return watch
        self._flush()
        self._rewatch()
        return ThespianWatch(list(self.watched))

    def _rewatch(self) -> None:
        """Watch the poke fd and the fds of every task that is not busy with a message."""
        owner: dict[int, _Hosted] = {}
        with self.lock:
            for hosted in self.tasks.values():
                if hosted.pending == 0 and not hosted.gone and hosted.actor is not None:
                    for fd in list(hosted.actor.watched):
                        owner[fd] = hosted
        self.fd_owner = owner
        self.watched = [self.poke_fd, *owner]

    def _flush(self) -> None:
        """Send what the tasks posted. What went to one actor goes as one Batch, in the order posted:
        each Thespian message costs a send, an ACK and turns of the loop at both ends, and with 20
        tasks at work a flush held about 1.4 messages for each actor it sends to. An Answer goes
        alone: its asker may be outside the actor tree (``ActorSystem.ask``) and takes one message."""
        with self.lock:
            items, self.outbox = self.outbox, []
        sends: list[tuple[Any, list[Any]]] = []  # (target, its messages); an ActorAddress is not hashable
        for item in items:
            if item[0] == "send":
                group = next((g for g in sends if g[0] == item[1]), None)
                if isinstance(item[2], Answer | ActorExitRequest):
                    if group is not None:  # what came before it goes first
                        sends.remove(group)
                        self._send_all(*group)
                    self._send_all(item[1], [item[2]])
                elif group is None:
                    sends.append((item[1], [item[2]]))
                else:
                    group[1].append(item[2])
            elif item[0] == "wakeup":
                self.wakeupAfter(item[1], payload=item[2])
            elif item[0] == "gone":
                self._forget(item[1])
        for target, messages in sends:
            self._send_all(target, messages)

    def _send_all(self, target: Any, messages: list[Any]) -> None:
        """One message, or a Batch of several; a send that fails is logged and costs only its own
        messages, never the rest of the outbox (a TaskReady lost with it would leave its task unseen)."""
        if not messages:
            return
        try:
            self.send(target, messages[0] if len(messages) == 1 else Batch(tuple(messages)))
        except Exception as exc:
            self.log.error("send_failed", target=str(target), messages=[type(m).__name__ for m in messages],
                           error=repr(exc))  # fmt: skip

    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        if self.poke_fd in msg.ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.eventfd_read(self.poke_fd)
        ready: dict[_Hosted, list[int]] = {}
        for fd in msg.ready:
            hosted = self.fd_owner.get(fd)
            if hosted is not None and not hosted.gone:
                ready.setdefault(hosted, []).append(fd)
        for hosted, fds in ready.items():
            self.deliver(hosted, WatchMessage(fds), sender)

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        payload = msg.payload
        if not (isinstance(payload, tuple) and len(payload) == 4 and payload[0] == "task"):
            return
        hosted = self.tasks.get(payload[1])
        if hosted is not None and hosted.serial == payload[2]:
            self.deliver(hosted, WakeupMessage(msg.delayPeriod, payload[3]), sender)
        else:  # a task that was replaced here keeps its own wake-ups until it is done
            for old in self.leaving:
                if old.key == payload[1] and old.serial == payload[2]:
                    self.deliver(old, WakeupMessage(msg.delayPeriod, payload[3]), sender)

    def on_TaskSetup(self, msg: TaskSetup, sender: Any) -> None:
        key = (msg.namespace, msg.id)
        old = self.tasks.pop(key, None)
        if old is not None:  # replaced by the RuntimeActor: finishes what it holds, gets nothing new
            self.leaving.add(old)
        self.serials += 1
        hosted = _Hosted(key, self.serials)
        actor = TaskActor.__new__(TaskActor)
        actor._myRef = _Ref(self, hosted)
        TaskActor.__init__(actor)
        hosted.actor = actor
        hosted.thread = threading.Thread(target=self._run, args=(hosted,), name=f"task-{msg.id}", daemon=True)
        self.tasks[key] = hosted
        self.deliver(hosted, msg, sender)
        hosted.thread.start()

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        for hosted in list(self.tasks.values()):
            self.deliver(hosted, msg, sender)

    def on_Committed(self, msg: Committed, sender: Any) -> None:
        ns, _, rest = msg.key.partition("/")
        cid = rest.partition("/")[0]
        for hosted in [*self.tasks.values(), *self.leaving]:
            if hosted.key == (ns, cid):
                self.deliver(hosted, msg, sender)

    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> None:
        hosted = self.tasks.get((msg.namespace, msg.id))
        if hosted is None or hosted.gone:
            raise Unavailable(f"task {msg.id} is not available")
        self.deliver(hosted, ask, sender)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """The daemon stops: every TaskActor lets go of its shim (never touching it), then the host exits."""
        everyone = [*self.tasks.values(), *self.leaving]
        for hosted in everyone:
            self.deliver(hosted, ActorExitRequest(), sender)
        for hosted in everyone:
            if hosted.thread is not None:
                hosted.thread.join(EXIT_WAIT / max(1, len(everyone)))
        self._flush()

    # -- a TaskActor's thread -----------------------------------------------------------------------------
    def _run(self, hosted: _Hosted) -> None:
        actor = hosted.actor
        while True:
            msg, sender = hosted.mailbox.get()
            done = isinstance(msg, ActorExitRequest)
            try:
                if done:  # not through receiveMessage: its fd juggling is for a process of its own
                    actor.exiting = True
                    actor.on_ActorExitRequest(msg, sender)
                else:
                    actor.receiveMessage(msg, sender)
            except BaseException as exc:  # receiveMessage answers its own errors; this is a bug
                actor.log.error("task_thread_failed", error=repr(exc), exception=traceback.format_exc())
                if isinstance(msg, Ask):
                    self.post(("send", msg.reply_to or sender, Answer(msg.corr, ErrorReply("internal", repr(exc)))))
            with self.lock:
                hosted.pending -= 1
                if done:
                    hosted.gone = True
            if done:
                self.post(("gone", hosted))  # the host forgets it, on its own thread
                return
            self._poke()  # the host looks at its fds again

    def _forget(self, hosted: _Hosted) -> None:
        self.leaving.discard(hosted)
        if self.tasks.get(hosted.key) is hosted:
            del self.tasks[hosted.key]
