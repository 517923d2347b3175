"""The Exchange's durable log: every envelope, numbered, before anyone sees it.

An append-only sqlite table (WAL, ``synchronous=NORMAL``) in the root dir.  Each
envelope gets the next sequence number of this node and is committed before
it is fanned out, so a subscriber that connects late (after a daemon restart,
after its own crash) asks for everything since a sequence number or a time
and misses nothing.  NORMAL survives any crash of the daemon (a commit is in
the WAL file when it returns); a power cut may lose the last commits, and
with them events about containers that the power cut ended anyway.  The log is bounded: the oldest entries beyond
``max_entries`` or older than ``max_age`` seconds are dropped as new ones come.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Final

from actors.errdefs import FailedPrecondition, InvalidArgument
from actors.messages import Envelope

__all__ = ["EventLog", "LogReader", "check_since", "MAX_ENTRIES", "MAX_AGE"]

MAX_ENTRIES: Final = 100_000
MAX_AGE: Final = 7 * 24 * 3600.0
_PRUNE_EVERY: Final = 1000


class EventLog:
    def __init__(self, path: Path, max_entries: int = MAX_ENTRIES, max_age: float = MAX_AGE) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = not path.exists()
        self.db = sqlite3.connect(path, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, timestamp REAL NOT NULL, "
            "namespace TEXT NOT NULL, topic TEXT NOT NULL, event TEXT NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS events_time ON events (timestamp)")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
        if "node" not in columns:  # a log from before clustering: its events are this node's own
            self.db.execute("ALTER TABLE events ADD COLUMN node TEXT NOT NULL DEFAULT ''")
            self.db.execute("ALTER TABLE events ADD COLUMN origin_seq INTEGER NOT NULL DEFAULT 0")
        self.db.execute("CREATE INDEX IF NOT EXISTS events_origin ON events (node, origin_seq)")
        # Keys of the envelopes that carry one (see Envelope.key), pruned with their events.
        self.db.execute("CREATE TABLE IF NOT EXISTS event_keys (key TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        self.seq = int(row[0] or 0)
        self.max_entries = max_entries
        self.max_age = max_age
        self._since_prune = 0

    def append(self, env: Envelope, again: bool = False) -> tuple[Envelope, bool]:
        """Number and commit ``env``; returns it with its sequence number, and whether it is new.

        An envelope whose key the log already holds is a duplicate: not logged; the number
        returned is the one the first got.  ``again`` is an envelope published a second time
        because the first may have been lost (a restored task's create, start or exit): one
        older than the oldest entry left in the log is not logged either, since its first copy
        may have been pruned with its key, and the log would tell it as news.
        """
        if env.key:
            row = self.db.execute("SELECT seq FROM event_keys WHERE key = ?", (env.key,)).fetchone()
            if row is not None:
                return dataclasses.replace(env, seq=int(row[0])), False
        if again:
            oldest = self.db.execute("SELECT MIN(timestamp) FROM events").fetchone()[0]
            if oldest is not None and env.timestamp < float(oldest):
                return env, False
        seq = self.seq + 1
        numbered = dataclasses.replace(env, seq=seq)
        with self.db:  # one transaction: the event and its key, or neither
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO events (seq, timestamp, namespace, topic, event, node, origin_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, env.timestamp, env.namespace, env.topic, json.dumps(env.event), env.node, env.origin_seq),
            )
            if env.key:
                self.db.execute("INSERT INTO event_keys (key, seq) VALUES (?, ?)", (env.key, seq))
        self.seq = seq
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self.prune()
        return numbered, True

    def origins(self) -> dict[str, int]:
        """For each other node whose events were imported: the highest origin_seq logged."""
        rows = self.db.execute("SELECT node, MAX(origin_seq) FROM events WHERE origin_seq > 0 GROUP BY node")
        return {str(node): int(seq) for node, seq in rows}

    def prune(self) -> None:
        self._since_prune = 0
        self.db.execute("DELETE FROM events WHERE seq <= ?", (self.seq - self.max_entries,))
        # The newest entry always stays: it carries the sequence on across a restart.
        self.db.execute("DELETE FROM events WHERE timestamp < ? AND seq < ?", (time.time() - self.max_age, self.seq))
        self.db.execute("DELETE FROM event_keys WHERE seq < (SELECT MIN(seq) FROM events)")

    def close(self) -> None:
        self.db.close()


def check_since(seq: int, head: int, oldest: int | None) -> None:
    """A subscription ``since`` this sequence number must lie within the log (or just before it)."""
    if seq > head:
        raise InvalidArgument(f"since {seq} is past the last event ({head})")
    if oldest is not None and seq < oldest - 1:
        raise FailedPrecondition(
            f"events {seq + 1} to {oldest - 1} are no longer in the log (it keeps the newest); "
            f"subscribe since {oldest - 1} or later"
        )


_COLUMNS: Final = "seq, timestamp, namespace, topic, event, node, origin_seq"


def _envelope(row: tuple[int, float, str, str, str, str, int]) -> Envelope:
    seq, ts, ns, topic, event, node, origin_seq = row
    return Envelope(ts, ns, topic, json.loads(event), seq, node, origin_seq)


class LogReader:
    """A reader of the log from another process (the Gateway): WAL lets it read while the Exchange writes.

    Whatever it reads is committed, in sequence order; a reader never writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self.db is None:
            if not self.path.exists():  # the Exchange makes it; nothing to read before that
                raise FileNotFoundError(self.path)
            self.db = sqlite3.connect(self.path, isolation_level=None)
        return self.db

    def bounds(self) -> tuple[int | None, int]:
        """(oldest sequence number held or None, newest or 0)."""
        try:
            oldest, newest = self._db().execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        except (FileNotFoundError, sqlite3.OperationalError):
            return None, 0
        return (None if oldest is None else int(oldest)), int(newest or 0)

    def before_time(self, timestamp: float) -> int:
        """The cursor that replays from ``timestamp``: the last sequence number before it."""
        _, newest = self.bounds()
        row = self._db().execute("SELECT MIN(seq) FROM events WHERE timestamp >= ?", (timestamp,)).fetchone()
        return newest if row[0] is None else int(row[0]) - 1

    def after(self, cursor: int, limit: int) -> list[Envelope]:
        """Up to ``limit`` envelopes after ``cursor``, oldest first."""
        try:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)
            ).fetchall()
        except (FileNotFoundError, sqlite3.OperationalError):
            return []
        return [_envelope(row) for row in rows]

    def own_after(self, cursor: int, limit: int) -> list[Envelope]:
        """Up to ``limit`` of this node's own envelopes (not imported ones) after ``cursor``, oldest first."""
        try:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? AND origin_seq = 0 ORDER BY seq LIMIT ?",
                (cursor, limit),
            ).fetchall()
        except (FileNotFoundError, sqlite3.OperationalError):
            return []
        return [_envelope(row) for row in rows]

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
