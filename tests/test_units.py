"""Plain functions and tables, tested without processes: ids, errors, states, runtime argv, specs."""

from __future__ import annotations

import itertools

import pytest

from actors import errdefs
from actors.identifiers import validate, validate_namespace
from actors.runc import Runtime, runtime_error
from actors.shim.process import EXEC_TRANSITIONS, INIT_TRANSITIONS, Process, State, check_transition
from actors.spec import default_spec

LEGAL_INIT = {
    ("created", "running"), ("created", "stopped"), ("created", "deleted"),
    ("running", "paused"), ("running", "stopped"),
    ("paused", "running"), ("paused", "stopped"),
    ("stopped", "deleted"),
}  # fmt: skip
LEGAL_EXEC = {
    ("created", "running"), ("created", "stopped"), ("created", "deleted"),
    ("running", "stopped"), ("stopped", "deleted"),
}  # fmt: skip


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(State, State)))
def test_every_cell_of_the_transition_tables(src: State, dst: State) -> None:
    for is_init, legal in ((True, LEGAL_INIT), (False, LEGAL_EXEC)):
        if (src.value, dst.value) in legal:
            check_transition(is_init, src, dst)
        else:
            with pytest.raises(errdefs.FailedPrecondition, match=f"in {src.value} state"):
                check_transition(is_init, src, dst)
    assert set(INIT_TRANSITIONS) == set(EXEC_TRANSITIONS) == set(State)


def test_first_exit_wins() -> None:
    p = Process("e1")
    assert p.set_exited(3, 1.0)
    assert not p.set_exited(9, 2.0)
    assert (p.state, p.exit_status, p.exited_at) == (State.STOPPED, 3, 1.0)
    assert p.wait(0)


@pytest.mark.parametrize("good", ["a", "abc", "a.b", "a-b_c.d", "A1", "x" * 76, "0"])
def test_valid_identifiers(good: str) -> None:
    assert validate(good) == good
    assert validate_namespace(good) == good


@pytest.mark.parametrize(
    "bad", ["", "x" * 77, "../etc", "a/b", ".hidden", "a..b", "a-", "-a", "a b", "ü", "a\x00b", None, 7]
)
def test_invalid_identifiers(bad: object) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        validate(bad)


def test_error_categories_round_trip_and_map_to_distinct_exit_codes() -> None:
    for category, cls in errdefs.CATEGORIES.items():
        err = errdefs.from_category(category, "msg")
        assert type(err) is cls and err.to_wire() == {"category": category, "message": "msg"}
    assert isinstance(errdefs.from_category("weird", "m"), errdefs.Internal)
    codes = list(errdefs.EXIT_CODES.values())
    assert len(set(codes)) == len(codes) == len(errdefs.CATEGORIES)
    assert not {0, 1, 2} & set(codes)


def test_runtime_argv_carries_root_and_log_everywhere() -> None:
    rt = Runtime("/usr/sbin/runc", "/run/x/runc/ns", "/b/log.json")
    base = ["/usr/sbin/runc", "--root", "/run/x/runc/ns", "--log", "/b/log.json", "--log-format", "json"]
    assert rt.create("c", "/b", "/b/init.pid", "/b/c.sock") == [
        *base, "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/b/c.sock", "c"
    ]  # fmt: skip
    assert rt.delete("c", force=True) == [*base, "delete", "--force", "c"]
    assert rt.kill("c", 9, True) == [*base, "kill", "--all", "c", "9"]
    assert rt.exec("c", "/p.json", "/e.pid") == [
        *base, "exec", "--process", "/p.json", "--detach", "--pid-file", "/e.pid", "c"
    ]  # fmt: skip
    assert rt.ps("c") == [*base, "ps", "--format", "json", "c"]


def test_runtime_errors_are_categorized() -> None:
    assert isinstance(runtime_error("kill", 1, b"container not running", not_running_is_not_found=True),
                      errdefs.NotFound)  # fmt: skip
    assert isinstance(runtime_error("pause", 1, b"container not running"), errdefs.FailedPrecondition)
    assert isinstance(
        runtime_error("create", 1, b'exec: "/x": no such file or directory'), errdefs.InvalidArgument
    )
    err = runtime_error("create", 1, b"boom")
    assert isinstance(err, errdefs.Internal) and err.message == "create: boom"


def test_default_spec_shape() -> None:
    spec = default_spec(["/bin/sh"], hostname="h", cgroups_path="/contactor/ns/id", terminal=True)
    assert spec["process"]["args"] == ["/bin/sh"] and spec["process"]["terminal"] is True
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["linux"]["cgroupsPath"] == "/contactor/ns/id"
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}


def test_fds_an_actor_closes_on_exit_stay_valid_for_thespians_last_poll() -> None:
    import os

    from thespian.actors import ActorExitRequest

    from actors._actor import ContactorActor

    class Closer(ContactorActor):
        def on_ActorExitRequest(self, msg: object, sender: object) -> None:
            for fd in self.watched:
                os.close(fd)

    r, w = os.pipe()
    actor = Closer()
    actor.watched = [r]
    assert actor.receiveMessage(ActorExitRequest(), None) is None
    os.fstat(r)  # still a valid fd (an idle pipe end), not a closed number epoll could be given
    os.close(r)
    os.close(w)
