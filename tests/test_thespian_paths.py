"""How the daemon drives Thespian, tested in one process: the Exchange's followers, the transport tuning."""

from __future__ import annotations

import dataclasses
import selectors
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import Actor, ActorSystem

from actors.config import Config, DaemonConfig
from actors.events import Exchange
from actors.events import envelope as make_envelope
from actors.messages import Appended, Configure, Follow, Peers, Publish, Ready, Unfollow


class Recorder(Actor):  # type: ignore[misc]
    """Keeps every Appended it is told; answers "got" with the list."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[int] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Appended):
            self.got.append(msg.seq)
        elif msg == "got":
            self.send(sender, list(self.got))


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        yield asys
    finally:
        asys.shutdown()


def _exchange(asys: ActorSystem, root: Path) -> Any:
    ex = asys.createActor(Exchange)
    cfg = dataclasses.replace(Config(), daemon=dataclasses.replace(DaemonConfig(), root=root))
    assert isinstance(asys.ask(ex, Configure(cfg, Peers(None, None, ex, None, None)), 10), Ready)
    return ex


def _publish(asys: ActorSystem, ex: Any, n: int) -> None:
    asys.tell(ex, Publish(make_envelope("default", "/probe", {"n": str(n)})))


def test_a_follower_is_told_only_while_it_follows_and_the_newest_word_wins(
    system: ActorSystem, tmp_path: Path
) -> None:
    ex, rec = _exchange(system, tmp_path), system.createActor(Recorder)
    _publish(system, ex, 1)
    assert system.ask(rec, "got", 10) == [], "nobody follows: nobody is told"

    system.tell(ex, Follow(rec, 1))  # told the log's current end at once
    _publish(system, ex, 2)
    assert system.ask(rec, "got", 10) == [1, 2]

    system.tell(ex, Unfollow(rec, 3))
    system.tell(ex, Follow(rec, 2))  # older than the Unfollow (it overtook it): ignored
    _publish(system, ex, 3)
    assert system.ask(rec, "got", 10) == [1, 2]

    system.tell(ex, Follow(rec, 4))
    _publish(system, ex, 4)
    assert system.ask(rec, "got", 10) == [1, 2, 3, 4]

    system.tell(ex, Unfollow(rec))  # a dead follower, said by the Supervisor: whatever its number
    _publish(system, ex, 5)
    assert system.ask(rec, "got", 10) == [1, 2, 3, 4]
    system.tell(ex, Follow(rec, 1))  # after that, any Follow counts again
    assert system.ask(rec, "got", 10) == [1, 2, 3, 4, 5]


def test_transport_tuning_renders_the_same_text_only_when_asked() -> None:
    from thespian.system import transport
    from thespian.system.transport import TCPTransport

    from actors.thespian_tuning import tune

    class Loud:
        rendered = 0

        def __str__(self) -> str:
            Loud.rendered += 1
            return "loud message"

    envelope_text = transport.ReceiveEnvelope("sender", Loud()).identify()
    before = Loud.rendered
    tune()
    tune()  # idempotent
    env = transport.ReceiveEnvelope("sender", Loud())
    lazy = env.identify()
    assert Loud.rendered == before, "identify() alone renders nothing"
    assert str(lazy) == envelope_text == str(env)
    assert Loud.rendered == before + 2
    assert "loud message" in str(transport.TransmitIntent("target", Loud()))
    from actors.thespian_tuning import _Poll

    assert TCPTransport.selectors.DefaultSelector is _Poll


def test_the_transport_s_poll_answers_as_the_poll_selector() -> None:
    """The loop's stand-in selector gives what selectors.PollSelector gives, case by case."""
    import os
    import socket

    from actors.thespian_tuning import _Poll

    def run(make: type, read: list[int], write: list[int], timeout: float | None) -> list[tuple[int, int]]:
        sel = make()
        try:
            for fd in read:
                sel.register(fd, selectors.EVENT_READ)
            for fd in write:
                sel.register(fd, selectors.EVENT_WRITE)
            return sorted((key.fd, events) for key, events in sel.select(timeout))
        finally:
            sel.close()

    a, b = socket.socketpair()
    r, w = os.pipe()
    closed_r, closed_w = os.pipe()
    os.close(closed_w)  # its read end is at EOF: readable
    try:
        cases = [
            ([a.fileno(), r], [], 0),  # nothing to read
            ([], [a.fileno(), w], 0),  # writable
            ([closed_r], [], 0.01),  # EOF
        ]
        b.send(b"x")
        cases.append(([a.fileno(), r], [b.fileno()], None))  # a readable, b writable
        for read, write, timeout in cases:
            assert run(_Poll, read, write, timeout) == run(selectors.PollSelector, read, write, timeout)
        assert run(_Poll, [r], [], 0.05) == []  # a timeout
        for make in (_Poll, selectors.PollSelector):
            sel = make()
            sel.register(r, selectors.EVENT_READ)
            with pytest.raises(KeyError):
                sel.register(r, selectors.EVENT_WRITE)
            with pytest.raises(ValueError):
                sel.register(-1, selectors.EVENT_READ)
            sel.close()
    finally:
        a.close()
        b.close()
        for fd in (r, w, closed_r):
            os.close(fd)


class Turns(Actor):  # type: ignore[misc]
    """Echoes ("echo", payload); counts the turns of its transport's loop (its polls) from "start"."""

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        from actors.thespian_tuning import _Poll

        if msg == "start":
            counted = [0]
            select = _Poll.select

            def counting(poll: Any, timeout: float | None = None) -> Any:
                counted[0] += 1
                return select(poll, timeout)

            _Poll.select = counting  # in this actor's own process only
            self.counted = counted
            self.send(sender, "started")
        elif msg == "turns":
            self.send(sender, self.counted[0])
        elif isinstance(msg, tuple) and msg[0] == "echo":
            self.send(sender, msg)


@pytest.fixture
def tcp_system() -> Iterator[ActorSystem]:
    from actors.testing import free_port
    from actors.thespian_tuning import tune

    tune()  # before the system starts: its admin and actors are forked from here and inherit it
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()}, transientUnique=True)
    try:
        yield asys
    finally:
        asys.shutdown()


# Thespian's own transport in this (the test's) process leaves sockets to the garbage collector.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_message_and_its_ack_are_each_taken_in_one_turn_of_the_loop(tcp_system: ActorSystem) -> None:
    """Thespian took three turns of the loop per message at each end; tuned, a request and its
    answer cost the answering actor two (the request, then the ACK of its answer). Messages far
    larger than a socket's buffer still arrive whole and in order."""
    echo = tcp_system.createActor(Turns)
    assert tcp_system.ask(echo, "start", 10) == "started"
    for i in range(40):
        assert tcp_system.ask(echo, ("echo", i, "x" * 300), 10) == ("echo", i, "x" * 300)
    turns = tcp_system.ask(echo, "turns", 10)
    assert turns <= 40 * 2 + 5, f"{turns} turns of the loop for 40 requests"
    big = [bytes([i]) * (3 << 20) for i in range(3)]  # 3 MiB each: many reads and partial sends
    for i, payload in enumerate(big):
        assert tcp_system.ask(echo, ("echo", i, payload), 30) == ("echo", i, payload)


def test_the_tuned_helpers_give_what_thespian_s_give() -> None:
    from datetime import timedelta

    from thespian.system import transport, utilis
    from thespian.system.timing import ExpirationTimer
    from thespian.system.transport import TCPTransport, asyncTransportBase

    from actors.thespian_tuning import tune

    tune()
    items = [3, 0, 7, 1, 8, 2]
    assert TCPTransport.partition(lambda x: x > 2, items) == utilis.partition(lambda x: x > 2, items)
    shape = ([1, 2, None], [3, (4, 5)])
    assert TCPTransport.fmap(lambda x: x and x * 2, shape) == utilis.fmap(lambda x: x and x * 2, shape)
    assert TCPTransport.fmap(str, {"a": 1}) == utilis.fmap(str, {"a": 1})

    class Flag:
        def __init__(self) -> None:
            self.held, self.releases = False, 0

        def _exclusively_processing(self) -> bool:
            if self.held:
                return False
            self.held = True
            return True

        def _not_processing(self) -> None:
            self.held, self.releases = False, self.releases + 1

    flag = Flag()
    with asyncTransportBase.exclusive_processing(flag):
        assert flag.held
    assert not flag.held and flag.releases == 1
    with pytest.raises(RuntimeError), TCPTransport.exclusive_processing(flag):
        raise RuntimeError("held on, as Thespian's own does")
    assert flag.held and flag.releases == 1

    tuned = transport.TransmitIntent.delay
    original = tuned._thespian
    plain = transport.TransmitIntent("target", "message", maxPeriod=timedelta(seconds=30))
    waiting = transport.TransmitIntent("target", "message", maxPeriod=timedelta(seconds=30))
    waiting.awaitingTXSlot()
    retrying = transport.TransmitIntent("target", "message", maxPeriod=timedelta(seconds=30))
    retrying.retry()
    paused = transport.TransmitIntent("target", "message", maxPeriod=timedelta(seconds=30))
    paused.backoffPause(True)
    expired = transport.TransmitIntent("target", "message", maxPeriod=timedelta(seconds=30))
    expired._quitTime = ExpirationTimer(timedelta(0))
    expired.awaitingTXSlot()
    for intent in (plain, waiting, retrying, paused, expired):
        now = intent._quitTime._time_to_quit - 12.5
        for at in (now, now + 20, now + 40):
            assert tuned(intent, at) == original(intent, at), intent


def test_a_whole_packet_is_deserialized_once_however_often_it_is_asked_for() -> None:
    import pickle

    from thespian.system.transport.streamBuffer import ReceiveBuffer, toSendBuffer

    from actors.thespian_tuning import tune

    tune()
    calls: list[bytes] = []

    def loads(data: bytes) -> Any:
        calls.append(data)
        return pickle.loads(data)

    first, second = toSendBuffer(("message", 1)), toSendBuffer(("message", 2))
    buf = ReceiveBuffer(loads)
    buf.addMore(first[:5])
    assert buf.completed() is None and not calls
    buf.addMore(first[5:])  # Thespian reads no further than the packet's end
    buf.addMore(second[:3])  # what comes after it goes to extra
    assert buf.completed() == (("message", 1), second[:3])
    assert buf.completed() == (("message", 1), second[:3])
    buf.removeExtra()
    assert buf.completed() == (("message", 1), b"")
    assert len(calls) == 1


_CHUNK_PROBE = """
import sys
from actors import thespian_tuning

def minor_faults():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])

def leaf():  # a frame of about 250 bytes: more than one step of at(), so some depth puts it over an edge
    a = b = c = d = e = f = g = h = i = j = k = l = m = n = o = p = q = r = s = t = 0
    return a

def loop():
    for _ in range(5000):
        leaf()

def at(depth, run):
    return at(depth - 1, run) if depth else run()

worst = {}
for own_chunk in (False, True):
    worst[own_chunk] = 0
    for depth in range(200):  # about 24 KiB of frames: past the edge of a 16 KiB chunk
        before = minor_faults()
        at(depth, (lambda: thespian_tuning._in_own_chunk(loop)) if own_chunk else loop)
        worst[own_chunk] = max(worst[own_chunk], minor_faults() - before)
print(worst[False], worst[True])
"""


def test_a_loop_at_the_edge_of_a_stack_chunk_maps_no_chunk_per_call_in_its_own_chunk() -> None:
    # CPython before 3.13 maps a frame-stack chunk when a call does not fit in the current one and
    # unmaps it when the call returns: a loop at the edge pays a page fault (and mmap/munmap) per call.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", _CHUNK_PROBE], capture_output=True, text=True, cwd=repo, timeout=120)
    assert r.returncode == 0, r.stderr
    bare, own = map(int, r.stdout.split())
    if sys.version_info < (3, 13):
        assert bare >= 4000, "the probe no longer finds the edge of a chunk"
    assert own < 100


def test_tune_has_thespian_start_every_actor_through_its_own_chunk_once() -> None:
    from thespian.system import multiprocCommon

    from actors import thespian_tuning

    thespian_tuning.tune()
    start = multiprocCommon.startChild
    assert getattr(start, "_contactor_tuned", False)
    thespian_tuning.tune()
    assert multiprocCommon.startChild is start  # not wrapped twice
    seen: list[Any] = []
    assert start._thespian.__module__ == "thespian.system.multiprocCommon"  # Thespian's own, wrapped once
    assert thespian_tuning._in_own_chunk.__code__.co_stacksize >= thespian_tuning._OWN_CHUNK_SLOTS
    assert thespian_tuning._in_own_chunk(lambda *a, **k: seen.append((a, k)) or 7, 1, x=2) == 7
    assert seen == [((1,), {"x": 2})]
