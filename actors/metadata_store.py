"""The container store: namespaced container records in one sqlite file.

This is the functional core the MetadataActor owns: plain methods, no
threads, one connection, one writer.  It keeps containerd's rules for
container records (ids validated before anything else, the runtime name
required and immutable, labels at most 4096 bytes of key and value, updates
by field path) and its error categories (NotFound, AlreadyExists,
InvalidArgument).  Every write is its own transaction, committed before the
method returns; with WAL and ``synchronous=FULL`` a committed record
survives a crash of the daemon or the machine.  The file carries a schema
version, so a database written by a newer contactor is refused rather than
misread.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from actors.errdefs import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from actors.filters import parse_any
from actors.identifiers import validate, validate_namespace

__all__ = ["Container", "ContainerStore", "SCHEMA_VERSION", "MAX_LABEL_SIZE", "UPDATABLE_FIELDS"]

SCHEMA_VERSION: Final = 1
MAX_LABEL_SIZE: Final = 4096

_STR_FIELDS: Final = ("namespace", "id", "image", "runtime_name", "rootfs", "snapshot_key")
_MAP_FIELDS: Final = ("labels", "runtime_options", "spec", "extensions")
_TIME_FIELDS: Final = ("created_at", "updated_at")
# Update field paths (before any '.') and the ``update`` argument each takes its value from.
_PATH_ARGUMENTS: Final = {
    "labels": "labels", "image": "image", "spec": "spec", "snapshotkey": "snapshot_key", "extensions": "extensions",
}  # fmt: skip
# The field paths ``update`` accepts, besides ``labels.<key>`` and ``extensions.<key>``.
UPDATABLE_FIELDS: Final = tuple(_PATH_ARGUMENTS)


@dataclass(frozen=True, slots=True)
class Container:
    """One container record.  The store hands out fresh copies, so mutating one changes nothing stored."""

    namespace: str
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    runtime_name: str = ""
    runtime_options: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    rootfs: str = ""
    snapshot_key: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    extensions: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """A plain dict of plain values (msgpack- and pickle-safe); it shares nothing with this record."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Container:
        """The record a wire dict describes; InvalidArgument for unknown keys or values of the wrong type.

        ``namespace`` and ``id`` are required keys; the others default to empty.
        """
        if not isinstance(d, Mapping):
            raise InvalidArgument(f"a container record must be a map, not {type(d).__name__}")
        unknown = sorted(set(d) - _FIELD_NAMES, key=str)
        if unknown:
            raise InvalidArgument(f"unknown container record fields: {', '.join(map(str, unknown))}")
        for name in ("namespace", "id"):
            if name not in d:
                raise InvalidArgument(f"a container record needs {name!r}")
        values: dict[str, Any] = {}
        for name, value in d.items():
            if name in _STR_FIELDS and not isinstance(value, str):
                raise InvalidArgument(f"container {name} must be a string, not {type(value).__name__}")
            if name in _MAP_FIELDS:
                if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                    raise InvalidArgument(f"container {name} must be a map with string keys")
                value = copy.deepcopy(dict(value))
            if name in _TIME_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise InvalidArgument(f"container {name} must be a finite number of seconds")
                value = float(value)
            values[name] = value
        if not all(isinstance(v, str) for v in values.get("labels", {}).values()):
            raise InvalidArgument("container labels must map strings to strings")
        return cls(**values)

    def filter_view(self) -> dict[str, Any]:
        """The fields list filters see: id, image, runtime.name, labels.<k>, namespace (containerd's)."""
        view: dict[str, Any] = {
            "namespace": self.namespace,
            "id": self.id,
            "runtime": {"name": self.runtime_name},
            "labels": dict(self.labels),
        }
        if self.image:  # an empty image is absent, as in containerd
            view["image"] = self.image
        return view


_FIELD_NAMES: Final = frozenset(f.name for f in dataclasses.fields(Container))
_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Container))

_CREATE_TABLES: Final = (
    """CREATE TABLE schema_version (
        only_row INTEGER PRIMARY KEY CHECK (only_row = 0),
        version INTEGER NOT NULL
    )""",
    # Maps are JSON objects; times are seconds since the epoch.
    """CREATE TABLE containers (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        labels TEXT NOT NULL,
        image TEXT NOT NULL,
        runtime_name TEXT NOT NULL,
        runtime_options TEXT NOT NULL,
        spec TEXT NOT NULL,
        rootfs TEXT NOT NULL,
        snapshot_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        extensions TEXT NOT NULL,
        PRIMARY KEY (namespace, id)
    )""",
)
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM containers"
_INSERT: Final = f"INSERT INTO containers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE: Final = (
    f"UPDATE containers SET {', '.join(f'{c} = ?' for c in _COLUMNS[2:])} WHERE namespace = ? AND id = ?"
)


class ContainerStore:
    """Container records in the sqlite file at ``path``; single-threaded, the one writer of that file.

    ``clock`` gives created_at/updated_at (``time.time`` unless a test wants
    otherwise).  Close it with ``close()`` or use it as a context manager.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        try:
            _prepare_file(self.path)
        except OSError as exc:
            raise FailedPrecondition(f"cannot create the metadata database {self.path}: {exc}") from None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise FailedPrecondition(f"cannot open the metadata database {self.path}: {exc}") from None
        self._conn: sqlite3.Connection | None = conn
        try:
            self._configure(conn)
            with self._transaction() as tx:
                self._check_schema(tx)
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------------------
    def _configure(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise FailedPrecondition(f"{self.path} is not a usable sqlite database: {exc}") from None
        if str(mode).lower() != "wal":
            raise FailedPrecondition(f"{self.path}: sqlite refused WAL mode (journal_mode is {mode})")

    def _check_schema(self, tx: sqlite3.Connection) -> None:
        tables = {name for (name,) in tx.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables:
                raise FailedPrecondition(f"{self.path} is not a contactor metadata database "
                                         f"(it has tables {', '.join(sorted(tables))})")  # fmt: skip
            for statement in _CREATE_TABLES:
                tx.execute(statement)
            tx.execute("INSERT INTO schema_version (only_row, version) VALUES (0, ?)", (SCHEMA_VERSION,))
            return
        row = tx.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise FailedPrecondition(f"{self.path} has schema version {version}, newer than the "
                                     f"{SCHEMA_VERSION} this contactor knows: upgrade contactor")  # fmt: skip
        if version != SCHEMA_VERSION:
            raise FailedPrecondition(f"{self.path} has an unknown schema version {version!r}")

    # -- plumbing -----------------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FailedPrecondition(f"the metadata store {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably) on success and rolled back on any error."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise Internal(f"metadata database {self.path}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise Internal(f"metadata database {self.path}: {exc}") from exc
            raise

    def _read(self, sql: str, params: Sequence[Any]) -> builtins.list[tuple[Any, ...]]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise Internal(f"metadata database {self.path}: {exc}") from exc

    # -- the API ------------------------------------------------------------------------------------------
    def create(self, c: Container) -> Container:
        """Store a new record (created_at = updated_at = now) and return it as stored."""
        validate_namespace(c.namespace)
        validate(c.id, "container id")
        record = _checked(c)
        if not record.runtime_name:
            raise InvalidArgument(f"container {c.id!r}: a runtime name is required")
        now = self._clock()
        row = _encode(dataclasses.replace(record, created_at=now, updated_at=now))
        with self._transaction() as tx:
            if tx.execute("SELECT 1 FROM containers WHERE namespace = ? AND id = ?", row[:2]).fetchone():
                raise AlreadyExists(f"container {c.id!r} in namespace {c.namespace!r}: already exists")
            tx.execute(_INSERT, row)
        return _decode(row)

    def get(self, namespace: str, id: str) -> Container:
        validate_namespace(namespace)
        validate(id, "container id")
        rows = self._read(f"{_SELECT} WHERE namespace = ? AND id = ?", (namespace, id))
        if not rows:
            raise NotFound(f"container {id!r} in namespace {namespace!r}: not found")
        return _decode(rows[0])

    def list(self, namespace: str, filters: Sequence[str] = ()) -> builtins.list[Container]:
        """The namespace's records matching any of ``filters`` (containerd syntax), sorted by id."""
        validate_namespace(namespace)
        match = parse_any(filters)
        rows = self._read(f"{_SELECT} WHERE namespace = ? ORDER BY id", (namespace,))
        return [c for c in map(_decode, rows) if match.match(c.filter_view())]

    def update(
        self,
        namespace: str,
        id: str,
        *,
        labels: dict[str, str] | None = None,
        image: str | None = None,
        spec: dict[str, Any] | None = None,
        snapshot_key: str | None = None,
        extensions: dict[str, Any] | None = None,
        fieldpaths: Sequence[str] = (),
    ) -> Container:
        """Change a record the way containerd does, and return it as stored.

        Without ``fieldpaths`` every argument that is not None replaces its
        field.  With them, only the named paths change, each taking its value
        from the arguments (None counting as empty): ``labels``, ``labels.<k>``
        (a missing or empty value deletes the label), ``image``, ``spec``,
        ``snapshotkey``, ``extensions``, ``extensions.<k>`` (a missing value
        deletes the extension).  The runtime name never changes.
        """
        validate_namespace(namespace)
        validate(id, "container id")
        paths = _check_fieldpaths(id, fieldpaths)
        args = {"labels": labels, "image": image, "spec": spec, "snapshot_key": snapshot_key,
                "extensions": extensions}  # fmt: skip
        with self._transaction() as tx:
            rows = tx.execute(f"{_SELECT} WHERE namespace = ? AND id = ?", (namespace, id)).fetchall()
            if not rows:
                raise NotFound(f"container {id!r} in namespace {namespace!r}: not found")
            changed = _checked(_apply(_decode(rows[0]), paths, args))
            row = _encode(dataclasses.replace(changed, updated_at=self._clock()))
            tx.execute(_UPDATE, (*row[2:], namespace, id))
        return _decode(row)

    def delete(self, namespace: str, id: str) -> None:
        validate_namespace(namespace)
        validate(id, "container id")
        with self._transaction() as tx:
            cursor = tx.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (namespace, id))
            if cursor.rowcount == 0:
                raise NotFound(f"container {id!r} in namespace {namespace!r}: not found")

    def namespaces(self) -> builtins.list[str]:
        """The namespaces that hold at least one container, sorted."""
        return [
            ns for (ns,) in self._read("SELECT DISTINCT namespace FROM containers ORDER BY namespace", ())
        ]

    def close(self) -> None:
        """Close the database (idempotent); every write is already committed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ContainerStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- pure helpers -----------------------------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the missing directories (0700) and the database file (0600); existing ones are left as they are."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # the umask may have narrowed mkdir's mode
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _checked(c: Container) -> Container:
    """A private copy of ``c`` with its types checked, empty labels dropped and label sizes enforced."""
    record = Container.from_wire(c.to_wire())
    labels = {k: v for k, v in record.labels.items() if v}  # an empty label value means "no label"
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
            raise InvalidArgument(f"label {key[:40]!r}: key and value are longer than {MAX_LABEL_SIZE} bytes")
    if "" in record.extensions:
        raise InvalidArgument("extension names must not be empty")
    return dataclasses.replace(record, labels=labels)


def _check_fieldpaths(id: str, fieldpaths: Sequence[str]) -> tuple[str, ...]:
    if isinstance(fieldpaths, str):
        raise InvalidArgument("fieldpaths must be a sequence of paths, not one string")
    for path in fieldpaths:
        prefix, dot, key = path.partition(".") if isinstance(path, str) else ("", "", "")
        if not (path in UPDATABLE_FIELDS or (dot and key and prefix in ("labels", "extensions"))):
            raise InvalidArgument(f"cannot update {path!r} field on container {id!r}")
    return tuple(fieldpaths)


def _apply(current: Container, paths: tuple[str, ...], args: dict[str, Any]) -> Container:
    """The record after an update (containerd's rules; see ContainerStore.update)."""
    if not paths:
        return dataclasses.replace(current, **{k: v for k, v in args.items() if v is not None})
    maps = {"labels": dict(current.labels), "extensions": dict(current.extensions)}
    changes: dict[str, Any] = {}
    for path in paths:
        prefix, _, key = path.partition(".")
        name = _PATH_ARGUMENTS[prefix]
        given = args[name]
        if name not in maps:
            changes[name] = given if given is not None else ({} if name == "spec" else "")
        elif not key:
            maps[name] = dict(given or {})
        elif given is not None and key in given:
            maps[name][key] = given[key]
        else:
            maps[name].pop(key, None)
    return dataclasses.replace(current, labels=maps["labels"], extensions=maps["extensions"], **changes)


def _dump(c: Container, name: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"container {c.id!r}: {name} is not plain JSON data: {exc}") from None


def _encode(c: Container) -> tuple[Any, ...]:
    """The row for a record, in ``_COLUMNS`` order."""
    return tuple(_dump(c, n, getattr(c, n)) if n in _MAP_FIELDS else getattr(c, n) for n in _COLUMNS)


def _decode(row: Sequence[Any]) -> Container:
    values = dict(zip(_COLUMNS, row, strict=True))
    try:
        for name in _MAP_FIELDS:
            values[name] = json.loads(values[name])
    except (TypeError, ValueError) as exc:
        raise Internal(f"container {values['id']!r}: stored {name} is corrupt: {exc}") from None
    return Container(**values)
