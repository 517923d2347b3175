"""The container store, on real sqlite files: containerd's record rules, durability and the schema guard."""

from __future__ import annotations

import dataclasses
import pickle
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from actors import errdefs
from actors.metadata_store import MAX_LABEL_SIZE, SCHEMA_VERSION, Container, ContainerStore

SPEC = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"}}


class Clock:
    """A clock the test moves by hand, so timestamps are exact."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meta" / "metadata.db"


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Iterator[ContainerStore]:
    with ContainerStore(db_path, clock=clock) as s:
        yield s


def record(cid: str = "c1", ns: str = "default", **kw: Any) -> Container:
    fields: dict[str, Any] = {"image": "busybox", "runtime_name": "runc", "spec": SPEC}
    fields.update(kw)
    return Container(ns, cid, **fields)


# -- create / get / delete -------------------------------------------------------------------------------------


def test_create_returns_the_stored_record_with_times_set(store: ContainerStore, clock: Clock) -> None:
    given = record(labels={"app": "web"}, runtime_options={"root": "/run/x"}, rootfs="/r", snapshot_key="k",
                   extensions={"ext": {"a": [1, 2]}}, created_at=5.0, updated_at=6.0)  # fmt: skip
    created = store.create(given)
    assert created == dataclasses.replace(given, created_at=clock.now, updated_at=clock.now)
    assert store.get("default", "c1") == created


def test_records_are_copies(store: ContainerStore) -> None:
    labels = {"app": "web"}
    created = store.create(record(labels=labels))
    labels["app"] = "changed"
    created.labels["app"] = "changed too"
    created.spec["process"]["args"].append("x")
    fetched = store.get("default", "c1")
    assert fetched.labels == {"app": "web"}
    assert fetched.spec == SPEC


def test_create_twice_is_already_exists(store: ContainerStore) -> None:
    store.create(record())
    with pytest.raises(errdefs.AlreadyExists, match="c1"):
        store.create(record(image="other"))
    assert store.get("default", "c1").image == "busybox"


def test_the_same_id_in_two_namespaces_is_two_containers(store: ContainerStore) -> None:
    store.create(record(ns="default", image="a"))
    store.create(record(ns="k8s.io", image="b"))
    assert store.get("default", "c1").image == "a"
    assert store.get("k8s.io", "c1").image == "b"


def test_get_missing_is_not_found(store: ContainerStore) -> None:
    with pytest.raises(errdefs.NotFound, match="nope"):
        store.get("default", "nope")


def test_delete_removes_and_a_second_delete_is_not_found(store: ContainerStore) -> None:
    store.create(record())
    store.delete("default", "c1")
    with pytest.raises(errdefs.NotFound):
        store.get("default", "c1")
    with pytest.raises(errdefs.NotFound):
        store.delete("default", "c1")


def test_delete_in_another_namespace_is_not_found(store: ContainerStore) -> None:
    store.create(record())
    with pytest.raises(errdefs.NotFound):
        store.delete("other", "c1")
    assert store.get("default", "c1")


def test_a_deleted_id_can_be_created_again(store: ContainerStore) -> None:
    store.create(record())
    store.delete("default", "c1")
    assert store.create(record(image="again")).image == "again"


# -- validation --------------------------------------------------------------------------------------------------

BAD_NAMES = ["../x", "a" * 77, "", "a..b", "café", "a/b", ".a", "a-", "a b", "x\x00"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_ids_are_invalid_argument_everywhere(store: ContainerStore, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.create(record(cid=bad)),
        lambda: store.get("default", bad),
        lambda: store.update("default", bad, image="x"),
        lambda: store.delete("default", bad),
    ]
    for call in calls:
        with pytest.raises(errdefs.InvalidArgument):
            call()
    assert store.namespaces() == []


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_namespaces_are_invalid_argument_everywhere(store: ContainerStore, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.create(record(ns=bad)),
        lambda: store.get(bad, "c1"),
        lambda: store.list(bad),
        lambda: store.update(bad, "c1", image="x"),
        lambda: store.delete(bad, "c1"),
    ]
    for call in calls:
        with pytest.raises(errdefs.InvalidArgument, match="namespace"):
            call()


def test_an_id_of_76_characters_is_fine(store: ContainerStore) -> None:
    cid = "a" * 76
    store.create(record(cid=cid))
    assert store.get("default", cid).id == cid


def test_id_is_checked_before_anything_else(store: ContainerStore) -> None:
    # A bad id wins over a missing runtime and over an existing record.
    with pytest.raises(errdefs.InvalidArgument, match="container id"):
        store.create(Container("default", "../x"))


def test_runtime_name_is_required(store: ContainerStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="runtime"):
        store.create(record(runtime_name=""))
    assert store.list("default") == []


def test_labels_up_to_4096_bytes_of_key_and_value(store: ContainerStore) -> None:
    fits = {"k": "v" * (MAX_LABEL_SIZE - 1)}
    store.create(record(labels=fits))
    with pytest.raises(errdefs.InvalidArgument, match="4096"):
        store.create(record(cid="c2", labels={"k": "v" * MAX_LABEL_SIZE}))
    with pytest.raises(errdefs.InvalidArgument, match="4096"):
        store.update("default", "c1", labels={"kk": "v" * (MAX_LABEL_SIZE - 1)}, fieldpaths=["labels.kk"])
    assert store.get("default", "c1").labels == fits


def test_label_values_must_be_strings(store: ContainerStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="labels"):
        store.create(record(labels={"k": 1}))


def test_empty_label_values_are_not_stored(store: ContainerStore) -> None:
    assert store.create(record(labels={"a": "1", "b": ""})).labels == {"a": "1"}


def test_non_json_data_is_invalid_argument(store: ContainerStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="spec"):
        store.create(record(spec={"x": b"bytes"}))
    with pytest.raises(errdefs.InvalidArgument, match="runtime_options"):
        store.create(record(runtime_options={"x": float("nan")}))
    with pytest.raises(errdefs.InvalidArgument, match="extension"):
        store.create(record(extensions={"": 1}))
    assert store.list("default") == []


# -- list and filters ------------------------------------------------------------------------------------------


@pytest.fixture
def three(store: ContainerStore) -> ContainerStore:
    store.create(record("web2", labels={"app": "web", "tier": "front"}, image="nginx"))
    store.create(record("db", labels={"app": "db"}, runtime_name="crun"))
    store.create(record("web1", labels={"app": "web", "io.example/team": "blue"}, image=""))
    store.create(record("elsewhere", ns="other", labels={"app": "web"}))
    return store


def ids(containers: list[Container]) -> list[str]:
    return [c.id for c in containers]


def test_list_is_sorted_by_id_and_per_namespace(three: ContainerStore) -> None:
    assert ids(three.list("default")) == ["db", "web1", "web2"]
    assert ids(three.list("other")) == ["elsewhere"]
    assert three.list("empty") == []


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["labels.app==web"], ["web1", "web2"]),
        (["labels.tier"], ["web2"]),
        (["image!=busybox"], ["web1", "web2"]),
        (["image"], ["db", "web2"]),
        (["image==nginx"], ["web2"]),
        (["runtime.name==crun"], ["db"]),
        (["id~=^web"], ["web1", "web2"]),
        (["id==db", "labels.tier==front"], ["db", "web2"]),
        (["labels.app==web,image==nginx"], ["web2"]),
        (['labels."io.example/team"==blue'], ["web1"]),
        (["namespace==default"], ["db", "web1", "web2"]),
        (["namespace==other"], []),
        ([], ["db", "web1", "web2"]),
    ],
)
def test_list_filters(three: ContainerStore, filters: list[str], expected: list[str]) -> None:
    assert ids(three.list("default", filters)) == expected


def test_list_with_a_bad_filter_is_invalid_argument(three: ContainerStore) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="position"):
        three.list("default", ["labels.app=="])


def test_namespaces_lists_those_with_containers(three: ContainerStore) -> None:
    assert three.namespaces() == ["default", "other"]
    three.delete("other", "elsewhere")
    assert three.namespaces() == ["default"]


# -- update ------------------------------------------------------------------------------------------------------


@pytest.fixture
def c1(store: ContainerStore) -> Container:
    return store.create(record(labels={"a": "1", "b": "2"}, snapshot_key="snap", extensions={"x": 1, "y": 2}))


def test_update_without_paths_replaces_the_given_fields(
    store: ContainerStore, c1: Container, clock: Clock
) -> None:
    clock.now += 5
    updated = store.update("default", "c1", labels={"c": "3"}, image="alpine", snapshot_key="s2")
    assert updated == dataclasses.replace(c1, labels={"c": "3"}, image="alpine", snapshot_key="s2",
                                          updated_at=c1.created_at + 5)  # fmt: skip
    assert store.get("default", "c1") == updated


def test_update_without_arguments_only_touches_updated_at(
    store: ContainerStore, c1: Container, clock: Clock
) -> None:
    clock.now += 1
    assert store.update("default", "c1") == dataclasses.replace(c1, updated_at=c1.created_at + 1)


def test_update_with_paths_changes_only_those(store: ContainerStore, c1: Container) -> None:
    updated = store.update("default", "c1", labels={"a": "new"}, image="alpine", spec={"v": 2},
                           fieldpaths=["image"])  # fmt: skip
    assert (updated.image, updated.labels, updated.spec) == ("alpine", c1.labels, c1.spec)


def test_label_paths_set_and_delete_single_labels(store: ContainerStore, c1: Container) -> None:
    updated = store.update("default", "c1", labels={"a": "10", "b": "", "new": "n", "ignored": "i"},
                           fieldpaths=["labels.a", "labels.b", "labels.new"])  # fmt: skip
    assert updated.labels == {"a": "10", "new": "n"}


def test_a_label_path_missing_from_the_labels_deletes_it(store: ContainerStore, c1: Container) -> None:
    assert store.update("default", "c1", fieldpaths=["labels.a"]).labels == {"b": "2"}


def test_the_labels_path_replaces_all_labels(store: ContainerStore, c1: Container) -> None:
    assert store.update("default", "c1", labels={"z": "9"}, fieldpaths=["labels"]).labels == {"z": "9"}
    assert store.update("default", "c1", fieldpaths=["labels"]).labels == {}


def test_extension_paths(store: ContainerStore, c1: Container) -> None:
    updated = store.update(
        "default", "c1", extensions={"x": {"deep": True}}, fieldpaths=["extensions.x", "extensions.y"]
    )
    assert updated.extensions == {"x": {"deep": True}}
    assert store.update("default", "c1", extensions={"q": 1}, fieldpaths=["extensions"]).extensions == {
        "q": 1
    }


def test_spec_and_snapshotkey_paths(store: ContainerStore, c1: Container) -> None:
    updated = store.update("default", "c1", spec={"ociVersion": "1.1.0"}, snapshot_key="s9",
                           fieldpaths=["spec", "snapshotkey"])  # fmt: skip
    assert (updated.spec, updated.snapshot_key) == ({"ociVersion": "1.1.0"}, "s9")
    cleared = store.update("default", "c1", fieldpaths=["image", "snapshotkey"])
    assert (cleared.image, cleared.snapshot_key, cleared.spec) == ("", "", {"ociVersion": "1.1.0"})


@pytest.mark.parametrize(
    "path",
    ["runtime", "runtime_name", "id", "namespace", "created_at", "labels.", "snapshot_key", "image.x", ""],
)
def test_unknown_or_immutable_paths_are_invalid_argument(
    store: ContainerStore, c1: Container, path: str
) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="cannot update"):
        store.update("default", "c1", image="changed", fieldpaths=["image", path])
    assert store.get("default", "c1") == c1


def test_runtime_name_never_changes(store: ContainerStore, c1: Container) -> None:
    store.update("default", "c1", labels={}, image="x", spec={}, snapshot_key="", extensions={})
    assert store.get("default", "c1").runtime_name == "runc"


def test_update_missing_is_not_found(store: ContainerStore) -> None:
    with pytest.raises(errdefs.NotFound):
        store.update("default", "nope", image="x")


def test_a_failed_update_changes_nothing(store: ContainerStore, c1: Container) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.update("default", "c1", labels={"k": "v" * MAX_LABEL_SIZE})
    with pytest.raises(errdefs.InvalidArgument):
        store.update("default", "c1", spec={"x": object()})
    assert store.get("default", "c1") == c1


# -- the file: durability, permissions, schema ------------------------------------------------------------------


def test_records_survive_reopening(db_path: Path, clock: Clock) -> None:
    with ContainerStore(db_path, clock=clock) as first:
        created = first.create(record(labels={"a": "1"}))
        first.create(record("c2", ns="k8s.io"))
        first.update("default", "c1", image="alpine")
        first.delete("k8s.io", "c2")
    with ContainerStore(db_path) as second:
        assert second.get("default", "c1") == dataclasses.replace(created, image="alpine")
        assert second.namespaces() == ["default"]


def test_a_write_is_visible_to_another_connection_before_close(store: ContainerStore, db_path: Path) -> None:
    # Committed on return: a second reader sees it while the store is still open.
    store.create(record())
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("SELECT id FROM containers").fetchall() == [("c1",)]
    finally:
        other.close()


def test_the_database_is_in_wal_mode_with_full_sync(store: ContainerStore, db_path: Path) -> None:
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()
    conn = store._connection()
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_new_directory_is_0700_and_files_0600(store: ContainerStore, db_path: Path) -> None:
    store.create(record())
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    files = sorted(db_path.parent.iterdir())
    assert [f.name for f in files] == ["metadata.db", "metadata.db-shm", "metadata.db-wal"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_every_missing_parent_is_created_0700(tmp_path: Path) -> None:
    with ContainerStore(tmp_path / "a" / "b" / "m.db"):
        pass
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with ContainerStore(tmp_path / "m.db"):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def set_version(path: Path, version: Any) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (version,))
    conn.close()


def test_a_new_database_records_schema_version_1(store: ContainerStore, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(1,)]
    finally:
        conn.close()


def test_a_newer_schema_version_is_refused(db_path: Path) -> None:
    ContainerStore(db_path).close()
    set_version(db_path, SCHEMA_VERSION + 1)
    with pytest.raises(errdefs.FailedPrecondition, match=r"schema version 2, newer .* upgrade contactor"):
        ContainerStore(db_path)


@pytest.mark.parametrize("version", [0, "one"])
def test_an_unknown_schema_version_is_refused(db_path: Path, version: Any) -> None:
    ContainerStore(db_path).close()
    set_version(db_path, version)
    with pytest.raises(errdefs.FailedPrecondition, match="unknown schema version"):
        ContainerStore(db_path)


def test_a_foreign_sqlite_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(errdefs.FailedPrecondition, match="not a contactor metadata database"):
        ContainerStore(db_path)


def test_a_file_that_is_not_sqlite_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not a database, not even close" * 100)
    with pytest.raises(errdefs.FailedPrecondition, match="not a usable sqlite database"):
        ContainerStore(db_path)


def test_a_closed_store_refuses_calls(db_path: Path) -> None:
    s = ContainerStore(db_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(errdefs.FailedPrecondition, match="closed"):
        s.get("default", "c1")
    with pytest.raises(errdefs.FailedPrecondition, match="closed"):
        s.create(record())


# -- the record on the wire ----------------------------------------------------------------------------------------


def test_wire_round_trip_through_msgpack_and_pickle(store: ContainerStore) -> None:
    c = store.create(record(labels={"a": "1"}, extensions={"e": [1, "two", {"three": 3.0}]}))
    wire = c.to_wire()
    assert set(wire) == {"namespace", "id", "labels", "image", "runtime_name", "runtime_options", "spec",
                         "rootfs", "snapshot_key", "created_at", "updated_at", "extensions"}  # fmt: skip
    assert Container.from_wire(msgpack.unpackb(msgpack.packb(wire))) == c
    assert Container.from_wire(pickle.loads(pickle.dumps(wire))) == c
    assert pickle.loads(pickle.dumps(c)) == c


def test_to_wire_shares_nothing(store: ContainerStore) -> None:
    c = store.create(record())
    wire = c.to_wire()
    wire["spec"]["process"]["args"].append("x")
    assert c.spec == SPEC


def test_from_wire_defaults_everything_but_namespace_and_id() -> None:
    assert Container.from_wire({"namespace": "n", "id": "i", "created_at": 1}) == Container(
        "n", "i", created_at=1.0
    )


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ({"id": "i"}, "needs 'namespace'"),
        ({"namespace": "n"}, "needs 'id'"),
        ({"namespace": "n", "id": "i", "bogus": 1}, "unknown container record fields: bogus"),
        ({"namespace": "n", "id": 3}, "id must be a string"),
        ({"namespace": "n", "id": "i", "labels": {"a": 1}}, "labels must map strings to strings"),
        ({"namespace": "n", "id": "i", "spec": [1]}, "spec must be a map"),
        ({"namespace": "n", "id": "i", "spec": {1: "x"}}, "spec must be a map with string keys"),
        ({"namespace": "n", "id": "i", "created_at": True}, "created_at must be a finite number"),
        ({"namespace": "n", "id": "i", "updated_at": float("inf")}, "updated_at must be a finite number"),
    ],
)
def test_from_wire_refuses_malformed_records(wire: dict[Any, Any], reason: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=reason):
        Container.from_wire(wire)


def test_from_wire_refuses_a_non_map() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="must be a map"):
        Container.from_wire(["namespace", "id"])  # type: ignore[arg-type]


def test_filter_view_is_what_list_filters_see() -> None:
    c = Container("ns", "c1", labels={"a": "1"}, image="", runtime_name="runc", spec={"big": 1})
    assert c.filter_view() == {
        "namespace": "ns",
        "id": "c1",
        "runtime": {"name": "runc"},
        "labels": {"a": "1"},
    }


def test_map_key_order_is_kept(store: ContainerStore) -> None:
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"cwd": "/", "args": ["sh"]}}
    stored = store.create(record(spec=spec)).spec
    assert list(stored) == list(spec)
    assert list(store.get("default", "c1").spec["process"]) == ["cwd", "args"]
