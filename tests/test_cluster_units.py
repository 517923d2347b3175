"""The cluster's decisions without processes: the node table, placement, task memory, event pulls and the log.

The NodeActor does the I/O around these (``tests/test_cluster.py`` runs it on
three namespace hosts); here each rule is checked cell by cell.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actors.cluster_events import BATCH, Puller, serve
from actors.cluster_table import NodeTable, Tasks, parse_size, place
from actors.errdefs import FailedPrecondition, InvalidArgument
from actors.eventlog import EventLog, LogReader
from actors.events import envelope
from actors.messages import Envelope, EventBatch, NodeBeat, NodeInfo, NodeRow, Peers
from actors.taskinfo import TaskInfo

PEERS = Peers(None, None, None, None, None, "cluster-address")
G = 1 << 30


def info(name: str, free: int = 4 * G, cpus: int = 2, **labels: str) -> NodeInfo:
    return NodeInfo(name, f"{name}:1900", labels, cpus, 8 * G, ("runc",), free_memory=free)


def task(cid: str, status: str = "running") -> TaskInfo:
    return TaskInfo("default", cid, 100, status, 0, 0.0, 99, f"/b/{cid}", 1.0)


def beat(name: str, *tasks: TaskInfo, **kw: object) -> NodeBeat:
    return NodeBeat(info(name, **kw), PEERS, tasks)  # type: ignore[arg-type]


# -- NodeTable -----------------------------------------------------------------------------------------


def test_a_node_joins_once_on_its_first_heartbeat() -> None:
    table = NodeTable(timeout=3.0)
    assert table.beat(beat("n1"), now=0.0, wall=100.0) == [("/nodes/join", {"node": "n1", "address": "n1:1900"})]
    assert table.beat(beat("n1"), now=1.0, wall=101.0) == []
    assert [(r.info.name, r.state, r.last_seen) for r in table.rows()] == [("n1", "up", 101.0)]
    assert table.live_peers() == {"n1": PEERS}


def test_missed_heartbeats_lose_a_node_once_and_a_heartbeat_brings_it_back() -> None:
    table = NodeTable(timeout=3.0)
    table.beat(beat("n1", task("t1")), now=0.0, wall=100.0)
    assert table.expire(now=3.0) == [], "exactly the timeout is not yet lost"
    assert table.expire(now=3.5) == [("/nodes/lost", {"node": "n1", "address": "n1:1900",
                                                      "reason": "missed heartbeats"})]  # fmt: skip
    assert table.expire(now=9.0) == [] and table.lose("n1", "again") == []
    (row,) = table.rows()
    assert row.state == "lost" and row.tasks == (task("t1"),), "a lost node keeps its last reported tasks"
    assert table.live_peers() == {}
    assert table.beat(beat("n1"), now=10.0, wall=110.0)[0][0] == "/nodes/join"


def test_the_convention_dropping_a_node_loses_it_and_listing_it_again_asks_for_an_introduction() -> None:
    table = NodeTable(timeout=3.0)
    table.listed(info("n2"), admin="admin-n2")
    assert [r.state for r in table.rows()] == ["joining"]
    assert table.unintroduced(now=10.0, every=3.0) == ["n2"]
    assert table.unintroduced(now=12.0, every=3.0) == [], "not again before `every` passed"
    assert table.unintroduced(now=13.5, every=3.0) == ["n2"], "again: the last introduction may have been lost"
    table.beat(beat("n2"), now=14.0, wall=1.0)
    assert table.unintroduced(now=30.0, every=3.0) == [], "a node that beats needs none"
    table.listed(info("n2"), admin="admin-n2")  # the node restarted: its old actors are gone
    assert [r.state for r in table.rows()] == ["rejoining"] and table.live_peers() == {}
    assert table.lose("n2", "left the convention")[0][0] == "/nodes/lost"
    table.listed(info("n3"), admin="admin-n3")
    assert table.lose("n3", "left the convention") == [], "a node that never joined is not announced lost"


# -- placement ---------------------------------------------------------------------------------------------


def rows(*pairs: tuple[NodeInfo, int], lost: tuple[str, ...] = ()) -> tuple[NodeRow, ...]:
    return tuple(NodeRow(i, "lost" if i.name in lost else "up", 0.0, tuple(task(f"t{k}") for k in range(n)))
                 for i, n in pairs)  # fmt: skip


def test_placement_matches_labels_and_the_node_name_and_prefers_the_fewest_tasks() -> None:
    table = rows((info("a", zone="x"), 2), (info("b", zone="x"), 1), (info("c", zone="y"), 0))
    assert place(table, {}) == "c"
    assert place(table, {"zone": "x"}) == "b"
    assert place(table, {"node": "a"}) == "a"
    assert place(rows((info("a"), 0), (info("b"), 0)), {}) == "a", "a tie goes by name"


def test_placement_by_free_memory_and_cpus() -> None:
    table = rows((info("small", free=1 * G, cpus=8), 0), (info("big", free=16 * G, cpus=2), 3))
    assert place(table, {"mem": ">=2G"}) == "big"
    assert place(table, {"memory": ">=512M"}) == "small", "both fit: fewest tasks wins"
    assert place(table, {"cpus": ">=4"}) == "small"
    assert place(rows((info("a", free=2 * G), 0), (info("b", free=3 * G), 0)), {}) == "b", "then most free"
    with pytest.raises(FailedPrecondition, match="no live node matches mem>=32G"):
        place(table, {"mem": ">=32G"})


def test_placement_never_picks_a_lost_node() -> None:
    with pytest.raises(FailedPrecondition, match="no live node matches node=a"):
        place(rows((info("a"), 0), (info("b"), 5), lost=("a",)), {"node": "a"})
    assert place(rows((info("a"), 0), (info("b"), 5), lost=("a",)), {}) == "b"


@pytest.mark.parametrize("bad", [{"mem": "2G"}, {"mem": ">=lots"}, {"cpus": ">=two"}, {"mem": ">="}])
def test_a_malformed_constraint_is_invalid_argument(bad: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        place(rows((info("a"), 0)), bad)


def test_sizes_are_binary() -> None:
    assert parse_size("1048576") == 1 << 20
    assert parse_size("512M") == 512 << 20 and parse_size("2g") == 2 * G and parse_size("1.5GiB") == 3 * G // 2
    for bad in ("", "G", "-1G", "1X", "1 G 2"):
        with pytest.raises(InvalidArgument):
            parse_size(bad)


# -- what a node remembers of other nodes' tasks ---------------------------------------------------------


def test_the_newest_task_list_heard_wins() -> None:
    tasks = Tasks()
    tasks.heard("b", 10.0, (task("t1"),))
    tasks.heard("b", 5.0, ())  # an older roster arriving late does not forget t1
    assert tasks.of("b") == (task("t1"),)
    tasks.heard("b", 11.0, (task("t1"), task("t2")))
    assert [t.id for t in tasks.of("b")] == ["t1", "t2"] and tasks.of("nobody") == ()


# -- pulling other nodes' events -------------------------------------------------------------------------


def test_a_pull_starts_from_the_exchanges_cursor_and_only_one_runs_per_node() -> None:
    puller = Puller(stuck_after=3.0)
    assert puller.next("b", now=0.0) == ("cursor", 0)
    assert puller.next("b", now=1.0) is None, "one at a time"
    assert puller.imported("b", cursor=7, full=False), "a nudge came meanwhile: pull again at once"
    assert puller.next("b", now=1.5) == ("pull", 7)
    assert puller.answered("b", EventBatch("b", (), 7)) == ()
    assert not puller.idle("b")


def test_pulled_envelopes_become_imports_stamped_with_their_node_and_origin_seq() -> None:
    puller = Puller(stuck_after=3.0)
    puller.imported("b", 0, full=False)
    assert puller.next("b", now=0.0) == ("pull", 0)
    env = Envelope(1.0, "default", "/tasks/start", {"id": "t"}, seq=41)
    (imp,) = puller.answered("b", EventBatch("b", (env,), 41))
    assert (imp.node, imp.origin_seq, imp.seq) == ("b", 41, 0)
    assert not puller.imported("b", 41, full=False)
    assert puller.next("b", now=1.0) == ("pull", 41)


def test_a_pull_that_is_never_answered_is_given_up_and_a_lost_node_is_forgotten() -> None:
    puller = Puller(stuck_after=3.0)
    puller.imported("b", 5, full=False)
    assert puller.next("b", now=0.0) == ("pull", 5)
    assert puller.next("b", now=2.0) is None
    assert puller.next("b", now=3.5) == ("pull", 5), "stuck: tried again"
    puller.forget("b")
    assert puller.next("b", now=3.6) == ("pull", 5), "the cursor stays: nothing is lost or pulled twice"


# -- the log: own and imported envelopes ------------------------------------------------------------------


def test_the_log_serves_only_its_own_events_and_knows_how_far_it_imported(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db")
    log.append(Envelope(1.0, "default", "/tasks/create", {"id": "a"}, node="n1"))
    log.append(Envelope(2.0, "default", "/tasks/create", {"id": "b"}, node="n2", origin_seq=9))
    log.append(Envelope(3.0, "default", "/tasks/start", {"id": "a"}, node="n1"))
    log.append(Envelope(4.0, "default", "/tasks/start", {"id": "b"}, node="n2", origin_seq=10))
    assert log.origins() == {"n2": 10}
    reader = LogReader(tmp_path / "events.db")
    batch = serve(reader, "n1", since=0, limit=BATCH)
    assert [(e.seq, e.event["id"]) for e in batch.envelopes] == [(1, "a"), (3, "a")] and batch.head == 3
    assert serve(reader, "n1", since=3, limit=BATCH).envelopes == ()
    assert [(e.node, e.origin_seq) for e in reader.after(0, 10)] == [("n1", 0), ("n2", 9), ("n1", 0), ("n2", 10)]
    wire = reader.after(1, 1)[0].to_wire()
    assert (wire["node"], wire["origin_seq"], wire["seq"]) == ("n2", 9, 2)
    reader.close()
    log.close()
    assert EventLog(tmp_path / "events.db").origins() == {"n2": 10}, "durable: a restart resumes from here"


def test_a_log_from_before_clustering_gets_the_new_columns(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "events.db")
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, timestamp REAL NOT NULL, "
               "namespace TEXT NOT NULL, topic TEXT NOT NULL, event TEXT NOT NULL)")  # fmt: skip
    db.execute("INSERT INTO events VALUES (1, 1.0, 'default', '/tasks/exit', '{}')")
    db.commit()
    db.close()
    log = EventLog(tmp_path / "events.db")
    assert log.seq == 1 and log.origins() == {}
    env, _ = log.append(envelope("default", "/tasks/delete", {}))
    assert env.seq == 2
    reader = LogReader(tmp_path / "events.db")
    (old,) = reader.after(0, 1)
    reader.close()
    log.close()
    assert (old.node, old.origin_seq) == ("", 0) and "node" not in old.to_wire()
