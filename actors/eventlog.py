"""The Exchange's durable log: every envelope, numbered, before anyone sees it.

An append-only sqlite table (WAL, ``synchronous=FULL``) in the root dir.  Each
envelope gets the next sequence number of this node and is committed before
it is fanned out, so a subscriber that connects late (after a daemon restart,
after its own crash) asks for everything since a sequence number or a time
and misses nothing.  The log is bounded: the oldest entries beyond
``max_entries`` or older than ``max_age`` seconds are dropped as new ones come.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from actors.errdefs import FailedPrecondition, InvalidArgument
from actors.messages import Envelope

__all__ = ["EventLog", "MAX_ENTRIES", "MAX_AGE"]

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
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, timestamp REAL NOT NULL, "
            "namespace TEXT NOT NULL, topic TEXT NOT NULL, event TEXT NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS events_time ON events (timestamp)")
        row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        self.seq = int(row[0] or 0)
        self.max_entries = max_entries
        self.max_age = max_age
        self._since_prune = 0

    def append(self, env: Envelope) -> Envelope:
        """Number and commit ``env``; returns it with its sequence number."""
        self.seq += 1
        numbered = Envelope(env.timestamp, env.namespace, env.topic, env.event, self.seq)
        self.db.execute(
            "INSERT INTO events (seq, timestamp, namespace, topic, event) VALUES (?, ?, ?, ?, ?)",
            (self.seq, env.timestamp, env.namespace, env.topic, json.dumps(env.event)),
        )
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self.prune()
        return numbered

    def prune(self) -> None:
        self._since_prune = 0
        self.db.execute("DELETE FROM events WHERE seq <= ?", (self.seq - self.max_entries,))
        self.db.execute("DELETE FROM events WHERE timestamp < ?", (time.time() - self.max_age,))

    def since(self, seq: int | None = None, timestamp: float | None = None) -> Iterator[Envelope]:
        """Logged envelopes after ``seq`` (or at/after ``timestamp``), oldest first."""
        if seq is not None:
            oldest = self.db.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if seq > self.seq:
                raise InvalidArgument(f"since {seq} is past the last event ({self.seq})")
            if oldest is not None and seq < oldest - 1:
                raise FailedPrecondition(
                    f"events {seq + 1} to {oldest - 1} are no longer in the log (it keeps the newest); "
                    f"subscribe since {oldest - 1} or later"
                )
            rows = self.db.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq", (seq,))
        elif timestamp is not None:
            rows = self.db.execute("SELECT * FROM events WHERE timestamp >= ? ORDER BY seq", (timestamp,))
        else:
            return
        for seq_, ts, ns, topic, event in rows:
            yield Envelope(ts, ns, topic, json.loads(event), seq_)

    def close(self) -> None:
        self.db.close()
