"""Pulling the fleet's changes into a node's SQLite cache.

A node remembers the last change number it applied (``fleet_state.last_seq``)
and asks PostgreSQL for the entries changed since, as they are *now*
(an entry deleted since is a change without a row: deleted here too). It
writes PostgreSQL's rows as they are, without merging again, so every node
converges on PostgreSQL's state. An entry with an operation of this node still
waiting in the outbox is left alone, and the node's place in the change log
stays before that change: the push changes the entry in PostgreSQL, and the
next pull brings the merged result (whichever process of the node pushes and
whichever pulls).

A node that has never synced, or that was away longer than the change log is
kept, takes a snapshot of the whole list instead. A first snapshot only adds
and updates (a list that was local before the node joined is not thrown away;
``smtpguard store copy`` moves it into the fleet); a later one replaces.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from smtpguard.store import outbox
from smtpguard.store.suppression import _DELETE, _PENDING_DELETE, _PENDING_UPSERT, _UPSERT

#: Changes fetched per round trip.
PAGE = 10_000
_SUP = (
    "domain, local, reason, status, reply_code, diagnostic, source, first_seen, last_seen, "
    "count, expires, evidence"
)
_COLUMNS = {
    "suppression": ("suppression", _SUP),
    "pending": ("suppression_pending", f"{_SUP}, destination, actor"),
    "soft": ("soft_bounces", "domain, local, reason, first_seen, last_seen, count"),
}
_SOFT_UPSERT = (
    "INSERT INTO soft_bounces (domain, local, reason, first_seen, last_seen, count) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, local) DO UPDATE SET "
    "reason = excluded.reason, first_seen = excluded.first_seen, "
    "last_seen = excluded.last_seen, count = excluded.count"
)
_LOCAL = {
    "suppression": (_UPSERT, _DELETE),
    "pending": (_PENDING_UPSERT, _PENDING_DELETE),
    "soft": (_SOFT_UPSERT, "DELETE FROM soft_bounces WHERE domain = ? AND local = ?"),
}
_LOCAL_TABLE = {
    "suppression": "suppression",
    "pending": "suppression_pending",
    "soft": "soft_bounces",
}

Key = tuple[str, str]


@dataclass
class Pulled:
    """One page of the fleet's changes: per table, each key's row now (None: deleted)."""

    seq: int  # the newest change this page covers
    head: int  # the fleet's newest change
    rows: dict[str, dict[Key, tuple[Any, ...] | None]] = field(
        default_factory=lambda: {t: {} for t in _COLUMNS}
    )
    #: Per table and key, the first change number of the key in this page.
    seqs: dict[str, dict[Key, int]] = field(default_factory=lambda: {t: {} for t in _COLUMNS})
    snapshot: bool = False

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


def fetch(conn: Any, since: int, *, page: int = PAGE) -> Pulled:
    """The changes after ``since`` (a page of them), read in one consistent snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        head = int(conn.execute("SELECT seq FROM fleet_meta WHERE id = 1").fetchone()[0])
        if since >= head:
            return Pulled(head, head)
        oldest = conn.execute("SELECT min(seq) FROM suppression_changes").fetchone()[0]
        if since == 0 or oldest is None or oldest > since + 1:
            return _snapshot(conn, head)
        changes = conn.execute(
            "SELECT seq, tbl, domain, local FROM suppression_changes "
            "WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
            (since, head, page),
        ).fetchall()
        out = Pulled(changes[-1][0] if len(changes) == page else head, head)
        keys: dict[str, set[Key]] = {t: set() for t in _COLUMNS}
        for seq, tbl, domain, local in changes:
            keys[tbl].add((domain, local))
            out.seqs[tbl].setdefault((domain, local), seq)
        for tbl, wanted in keys.items():
            if not wanted:
                continue
            table, columns = _COLUMNS[tbl]
            rows = out.rows[tbl]
            for key in wanted:
                rows[key] = None
            for row in conn.execute(
                f"SELECT {columns} FROM {table} WHERE (domain, local) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([k[0] for k in wanted], [k[1] for k in wanted]),
            ):
                rows[(row[0], row[1])] = tuple(row)
        return out


def _snapshot(conn: Any, head: int) -> Pulled:
    out = Pulled(head, head, snapshot=True)
    for tbl, (table, columns) in _COLUMNS.items():
        rows, seqs = out.rows[tbl], out.seqs[tbl]
        with conn.cursor(name=f"smtpguard_snapshot_{tbl}") as cur:
            cur.itersize = 20_000
            cur.execute(f"SELECT {columns}, seq FROM {table} ORDER BY domain, local")
            for row in cur:
                key = (row[0], row[1])
                rows[key] = tuple(row[:-1])
                seqs[key] = row[-1]
    return out


def apply_local(conn: sqlite3.Connection, pulled: Pulled, *, now: float | None = None) -> int:
    """Write a page into the node's SQLite (inside the caller's transaction); rows written.

    Plain upserts and deletes: no history, no outbox (the fleet's history is in
    PostgreSQL; these rows came from there).
    """
    waiting = outbox.waiting_keys(conn)
    synced_before = outbox.get_state(conn, "last_seq") is not None
    written = 0
    upto = pulled.seq
    for tbl, rows in pulled.rows.items():
        # A change skipped for a waiting operation is fetched again next time: the
        # cache only moves past a change it has applied.
        for key in waiting.intersection(rows):
            if key in pulled.seqs[tbl]:
                upto = min(upto, pulled.seqs[tbl][key] - 1)
        upsert, delete = _LOCAL[tbl]
        if pulled.snapshot and synced_before:
            table = _LOCAL_TABLE[tbl]
            conn.execute(
                f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM fleet_outbox o "
                f"WHERE o.domain = {table}.domain AND o.local = {table}.local)"
            )
        ups = [row for key, row in rows.items() if row is not None and key not in waiting]
        dels = [key for key, row in rows.items() if row is None and key not in waiting]
        ups.sort()
        conn.executemany(upsert, ups)
        conn.executemany(delete, dels)
        written += len(ups) + len(dels)
    outbox.set_state(conn, "last_seq", max(upto, 0))
    outbox.set_state(conn, "synced_at", repr(time.time() if now is None else now))
    return written


def last_seq(conn: sqlite3.Connection) -> int:
    value = outbox.get_state(conn, "last_seq")
    return 0 if value is None else int(value)


def synced_at(conn: sqlite3.Connection) -> float | None:
    value = outbox.get_state(conn, "synced_at")
    return None if value is None else float(value)


def hints(pulled: Pulled) -> tuple[set[str], set[str]]:
    """(destinations with pending entries, addresses with soft bounces) in a page."""
    destinations = {row[12] for row in pulled.rows["pending"].values() if row is not None}
    soft = {f"{k[1]}@{k[0]}" for k, row in pulled.rows["soft"].items() if row is not None}
    return destinations, soft
