"""The fleet outbox: local changes to the list waiting to reach PostgreSQL.

With ``store.backend = "postgresql"`` each node keeps answering RCPT checks
from its own SQLite database, which becomes a *cache* of the fleet's list in
PostgreSQL. A change decided on this node (a bounce's suppression, an
operator's ``suppression add``) is written locally exactly as on a single
host, and in the same transaction one outbox row per operation describes it
(the observation, the actor, the time). The replicator
(:mod:`smtpguard.store.pg.replicator`) pushes the rows to PostgreSQL, which
applies the same merge rule to its own state; every node then pulls
PostgreSQL's resulting rows. So nothing decided while PostgreSQL is away is
lost: it waits here, durable, and is replayed in order.

Whether a database has an outbox is a property of the data directory, not of
one process: :func:`attach` marks it (``fleet_state.node``), and every
connection :func:`smtpguard.store.db.connect` opens on it from then on (relay,
milter, CLI) records outbox rows. A database never attached has none and
behaves exactly as before.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpguard.errors import UserError
from smtpguard.store.db import connect, transaction
from smtpguard.store.entries import Observation, SuppressionEntry

#: Operations the outbox carries (see :mod:`smtpguard.store.pg.apply`).
OPS = (
    "observe", "remove", "history", "pending", "confirm", "discard",
    "soft", "soft-clear", "soft-forget", "prune", "daily",
)  # fmt: skip
#: Operations about no entry of the list.
KEYLESS = ("history", "prune", "daily")

_OBS_FIELDS = (
    "address", "kind", "reason", "source", "status", "reply_code", "diagnostic", "expires",
    "note", "first_seen", "last_seen", "count", "evidence",
)  # fmt: skip
_ENTRY_FIELDS = (
    "address", "kind", "reason", "status", "reply_code", "diagnostic", "source", "first_seen",
    "last_seen", "count", "expires", "evidence",
)  # fmt: skip
_INSERT = "INSERT INTO fleet_outbox (at, op, domain, local, payload) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    at: float
    op: str
    domain: str
    local: str
    payload: dict[str, Any]


def obs_dict(obs: Observation) -> dict[str, Any]:
    return {f: getattr(obs, f) for f in _OBS_FIELDS}


def obs_from(d: dict[str, Any]) -> Observation:
    return Observation(**{f: d[f] for f in _OBS_FIELDS})


def entry_dict(e: SuppressionEntry) -> dict[str, Any]:
    return {f: getattr(e, f) for f in _ENTRY_FIELDS}


def entry_from(d: dict[str, Any]) -> SuppressionEntry:
    return SuppressionEntry(**{f: d[f] for f in _ENTRY_FIELDS})


def enabled(conn: sqlite3.Connection) -> bool:
    """True on a connection to a fleet node's database (see the module doc)."""
    return getattr(conn, "fleet", False)


def note(conn: sqlite3.Connection, op: str, key: tuple[str, str], payload: dict[str, Any]) -> None:
    """Queue one operation for PostgreSQL, inside the caller's transaction.

    A no-op unless the connection belongs to a fleet node. ``key`` is the
    (domain, local) the operation is about, ('', '') for none.
    """
    if enabled(conn):
        conn.execute(_INSERT, (time.time(), op, key[0], key[1], json.dumps(payload)))


Op = tuple[str, tuple[str, str], dict[str, Any]]


def note_many(conn: sqlite3.Connection, rows: list[Op]) -> None:
    if rows and enabled(conn):
        now = time.time()
        conn.executemany(_INSERT, [(now, op, k[0], k[1], json.dumps(p)) for op, k, p in rows])


def read(conn: sqlite3.Connection, limit: int) -> list[OutboxRow]:
    """The oldest ``limit`` operations, in the order they were made."""
    rows = conn.execute(
        "SELECT id, at, op, domain, local, payload FROM fleet_outbox ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return [OutboxRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


def delete_through(conn: sqlite3.Connection, last_id: int) -> int:
    """Forget operations PostgreSQL has committed (ids up to ``last_id``)."""
    return conn.execute("DELETE FROM fleet_outbox WHERE id <= ?", (last_id,)).rowcount


def depth(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """(operations waiting, when the oldest was made), from the primary key alone.

    Pushed rows are deleted oldest first, so what waits is one range of ids (less
    the ids of rolled-back transactions): two index reads, however long the
    outbox grew during an outage (this runs on the relay's event loop).
    """
    first = conn.execute("SELECT id, at FROM fleet_outbox ORDER BY id LIMIT 1").fetchone()
    if first is None:
        return 0, None
    last = conn.execute("SELECT max(id) FROM fleet_outbox").fetchone()[0]
    return int(last - first[0] + 1), first[1]


def waiting_keys(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    """Entries with operations not yet pushed: a pull must not overwrite them."""
    sql = (
        "SELECT DISTINCT domain, local FROM fleet_outbox "
        "WHERE op NOT IN ('history', 'prune', 'daily')"
    )
    return {(r[0], r[1]) for r in conn.execute(sql)}


def get_state(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM fleet_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_state(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO fleet_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node: str  # the name in the fleet's history
    instance: str  # this database's id in PostgreSQL (its outbox ids are counted per instance)


def attach(
    data_dir: str | Path, node: str, *, busy_timeout: float = 5.0, group: str = ""
) -> NodeIdentity:
    """Make the database under ``data_dir`` a fleet node's cache (idempotent).

    The instance id is made once per database: a node whose database is
    replaced starts a new instance, so PostgreSQL does not mistake its new
    outbox ids for ones it has already applied.
    """
    conn = connect(data_dir, busy_timeout=busy_timeout, group=group)
    try:
        path = Path(data_dir) / "smtpguard.db"
        with transaction(conn, path):
            instance = get_state(conn, "instance")
            if instance is None:
                instance = uuid.uuid4().hex
                set_state(conn, "instance", instance)
            if get_state(conn, "node") != node:
                set_state(conn, "node", node)
        return NodeIdentity(node, instance)
    finally:
        conn.close()


def detach(data_dir: str | Path, *, force: bool, busy_timeout: float = 5.0) -> int:
    """Turn a fleet node's database back into a standalone one; returns the
    operations dropped (refused without ``force`` when some were never pushed)."""
    conn = connect(data_dir, busy_timeout=busy_timeout, create=False)
    try:
        path = Path(data_dir) / "smtpguard.db"
        with transaction(conn, path):
            waiting, _ = depth(conn)
            if waiting and not force:
                raise UserError(
                    f"{path}: {waiting} changes were never pushed to PostgreSQL"
                    " (run `smtpguard store sync` first, or --force to drop them)"
                )
            conn.execute("DELETE FROM fleet_outbox")
            conn.execute("DELETE FROM fleet_state")
        return waiting
    finally:
        conn.close()
