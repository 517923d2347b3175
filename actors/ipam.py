"""IPAM: which task holds which address of a bridge's subnet, and which host ports it publishes.

One small sqlite file (``<root>/ipam.db``), apart from the container records:
an address is taken by the TaskActor that sets the task's network up, in the
same step, and given back by whoever tears it down (the TaskActor on delete or
after its shim died, the RuntimeActor at start for tasks that are gone).  Each
of those is its own process; every change is one ``BEGIN IMMEDIATE``
transaction, so sqlite serializes them, and the unique keys make handing out an
address (or a host port) twice impossible, not merely unlikely.  With WAL and
``synchronous=FULL`` a committed allocation survives a crash of the daemon or
of the machine: the address stays the task's until it is released.

Addresses are handed out round robin from the one after the last one given,
so a released address is not reused at once (stale ARP entries and conntrack
state of its last owner fade first).  The subnet's network and broadcast
addresses and its first host (the bridge's own address) are never handed out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from actors.errdefs import AlreadyExists, FailedPrecondition, Internal
from actors.netopts import PortMapping

__all__ = ["IPAM", "Allocation", "SCHEMA_VERSION", "gateway_of"]

SCHEMA_VERSION: Final = 1

_TABLES: Final = (
    "CREATE TABLE schema_version (only_row INTEGER PRIMARY KEY CHECK (only_row = 0), version INTEGER NOT NULL)",
    """CREATE TABLE addresses (
        namespace TEXT NOT NULL, id TEXT NOT NULL, subnet TEXT NOT NULL, address TEXT NOT NULL,
        allocated_at REAL NOT NULL,
        PRIMARY KEY (namespace, id), UNIQUE (subnet, address))""",
    """CREATE TABLE ports (
        protocol TEXT NOT NULL, host_port INTEGER NOT NULL, container_port INTEGER NOT NULL,
        namespace TEXT NOT NULL, id TEXT NOT NULL,
        PRIMARY KEY (protocol, host_port))""",
    "CREATE TABLE cursors (subnet TEXT PRIMARY KEY, last INTEGER NOT NULL)",
)


def gateway_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The bridge's address: the subnet's first host, with the subnet's prefix."""
    return ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


@dataclass(frozen=True, slots=True)
class Allocation:
    namespace: str
    id: str
    subnet: str
    address: str
    ports: tuple[PortMapping, ...] = ()
    allocated_at: float = 0.0

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        """The address with its subnet's prefix, as it goes on the task's eth0."""
        return ipaddress.IPv4Interface(f"{self.address}/{ipaddress.IPv4Network(self.subnet).prefixlen}")


class IPAM:
    """The allocations in the sqlite file at ``path``; open it, make a change or two, close it."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        try:
            _prepare(self.path)
            self._conn: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 10000")
            _wal(self._conn)
            self._conn.execute("PRAGMA synchronous = FULL")
        except (OSError, sqlite3.Error) as exc:
            raise FailedPrecondition(f"cannot open the address database {self.path}: {exc}") from None
        try:
            with self._transaction() as tx:
                self._check_schema(tx)
        except BaseException:
            self.close()
            raise

    def _check_schema(self, tx: sqlite3.Connection) -> None:
        tables = {name for (name,) in tx.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            for statement in _TABLES:
                tx.execute(statement)
            tx.execute("INSERT INTO schema_version VALUES (0, ?)", (SCHEMA_VERSION,))
            return
        row = tx.execute("SELECT version FROM schema_version").fetchone() if "schema_version" in tables else None
        if row is None or row[0] != SCHEMA_VERSION:
            raise FailedPrecondition(f"{self.path} is not an address database of schema {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise FailedPrecondition(f"the address database {self.path} is closed")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise Internal(f"address database {self.path}: {exc}") from exc
            raise

    # -- the API ------------------------------------------------------------------------------------------
    def allocate(self, subnet: ipaddress.IPv4Network, namespace: str, id: str, requested: str = "",
                 ports: Sequence[PortMapping] = ()) -> Allocation:  # fmt: skip
        """Give the task an address of ``subnet`` (``requested``, or the next free one) and its host ports.

        All or nothing, in one transaction.  A task that holds an address already
        keeps it (a create that is retried); AlreadyExists if the requested address
        or a host port belongs to another task; FailedPrecondition if the subnet is full.
        """
        net = str(subnet)
        with self._transaction() as tx:
            held = tx.execute("SELECT subnet, address FROM addresses WHERE namespace = ? AND id = ?",
                              (namespace, id)).fetchone()  # fmt: skip
            if held is not None and (held[0] != net or (requested and requested != held[1])):
                _drop(tx, namespace, id)
                held = None
            address = held[1] if held is not None else self._pick(tx, subnet, requested)
            if held is None:
                tx.execute("INSERT INTO addresses VALUES (?, ?, ?, ?, ?)",
                           (namespace, id, net, address, self._clock()))  # fmt: skip
            tx.execute("DELETE FROM ports WHERE namespace = ? AND id = ?", (namespace, id))
            for p in ports:
                owner = tx.execute("SELECT namespace, id FROM ports WHERE protocol = ? AND host_port = ?",
                                   (p.protocol, p.host_port)).fetchone()  # fmt: skip
                if owner is not None:
                    raise AlreadyExists(f"host port {p.host_port}/{p.protocol} is published by {owner[0]}/{owner[1]}")
                tx.execute("INSERT INTO ports VALUES (?, ?, ?, ?, ?)",
                           (p.protocol, p.host_port, p.container_port, namespace, id))  # fmt: skip
        found = self.lookup(namespace, id)
        assert found is not None
        return found

    def _pick(self, tx: sqlite3.Connection, subnet: ipaddress.IPv4Network, requested: str) -> str:
        net = str(subnet)
        taken = {a for (a,) in tx.execute("SELECT address FROM addresses WHERE subnet = ?", (net,))}
        if requested:
            if requested in taken:
                owner = tx.execute("SELECT namespace, id FROM addresses WHERE subnet = ? AND address = ?",
                                   (net, requested)).fetchone()  # fmt: skip
                raise AlreadyExists(f"address {requested} is taken by {owner[0]}/{owner[1]}")
            return requested
        first, size = int(subnet.network_address), subnet.num_addresses
        row = tx.execute("SELECT last FROM cursors WHERE subnet = ?", (net,)).fetchone()
        last = int(row[0]) if row else first + 1
        for step in range(1, size + 1):
            candidate = first + (last - first + step) % size
            # Not the network address, not the bridge's (first host), not the broadcast address.
            if candidate - first in (0, 1, size - 1):
                continue
            text = str(ipaddress.IPv4Address(candidate))
            if text not in taken:
                tx.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?)", (net, candidate))
                return text
        raise FailedPrecondition(f"subnet {net} has no free address left")

    def release(self, namespace: str, id: str) -> Allocation | None:
        """Give back the task's address and host ports; what it held, or None if nothing."""
        held = self.lookup(namespace, id)
        with self._transaction() as tx:
            _drop(tx, namespace, id)
        return held

    def lookup(self, namespace: str, id: str) -> Allocation | None:
        found = [a for a in self.allocations() if (a.namespace, a.id) == (namespace, id)]
        return found[0] if found else None

    def allocations(self) -> list[Allocation]:
        """Every task's allocation, by namespace and id."""
        if self._conn is None:
            raise FailedPrecondition(f"the address database {self.path} is closed")
        try:
            rows = self._conn.execute("SELECT namespace, id, subnet, address, allocated_at FROM addresses "
                                      "ORDER BY namespace, id").fetchall()  # fmt: skip
            port_rows = self._conn.execute("SELECT namespace, id, host_port, container_port, protocol FROM ports "
                                           "ORDER BY protocol, host_port").fetchall()  # fmt: skip
        except sqlite3.Error as exc:
            raise Internal(f"address database {self.path}: {exc}") from exc
        ports: dict[tuple[str, str], list[PortMapping]] = {}
        for ns, cid, host, ctr, proto in port_rows:
            ports.setdefault((ns, cid), []).append(PortMapping(int(host), int(ctr), str(proto)))
        return [Allocation(ns, cid, net, addr, tuple(ports.get((ns, cid), ())), float(at))
                for ns, cid, net, addr, at in rows]  # fmt: skip

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> IPAM:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _drop(tx: sqlite3.Connection, namespace: str, id: str) -> None:
    tx.execute("DELETE FROM addresses WHERE namespace = ? AND id = ?", (namespace, id))
    tx.execute("DELETE FROM ports WHERE namespace = ? AND id = ?", (namespace, id))


def _wal(conn: sqlite3.Connection, patience: float = 10.0) -> None:
    """Switch to WAL.  sqlite answers "locked" at once, without its busy handler, while another
    process opens a new file the same way; that lasts a moment, so it is tried again."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _prepare(path: Path) -> None:
    """The database's directory (0700) and file (0600), made if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
