"""Moving a suppression list between a node's SQLite and the fleet's PostgreSQL.

``smtpguard store copy --from sqlite --to postgresql`` takes a standalone host's
list (entries, history, pending entries, soft-bounce counts) into an *empty*
fleet list: a fleet is founded from one list. Its rows get change numbers, so
every node pulls them. (To merge a second host's list into a running fleet,
export it there and ``suppression import`` it on a fleet node: that goes through
the merge rule.) History rows are signed with the copying node's name.

``--from postgresql --to sqlite`` writes the fleet's list into a node's SQLite
(leaving the fleet, or keeping a standalone copy); the local list must be empty
unless ``replace``. History rows keep their node as ``actor@node``.

Both use PostgreSQL's COPY and SQLite's sorted bulk insert: a million entries
move in seconds, not in a million round trips.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from smtpguard.errors import UserError
from smtpguard.store import outbox

_SUP = (
    "domain, local, reason, status, reply_code, diagnostic, source, first_seen, last_seen, "
    "count, expires, evidence"
)
_PENDING = f"{_SUP}, destination, actor"
_SOFT = "domain, local, reason, first_seen, last_seen, count"
_HISTORY = (
    "address, kind, action, at, actor, note, old_reason, new_reason, source, status, "
    "reply_code, diagnostic, evidence"
)
#: The fleet's history as a node's: the node goes into the actor (``relay@node-a``).
_HISTORY_SIGNED = _HISTORY.replace(
    "actor", "actor || CASE WHEN node = '' THEN '' ELSE '@' || node END"
)
#: (SQLite table, PostgreSQL table, columns, change table name)
_TABLES = (
    ("suppression", "suppression", _SUP, "suppression"),
    ("suppression_pending", "suppression_pending", _PENDING, "pending"),
    ("soft_bounces", "soft_bounces", _SOFT, "soft"),
)


@dataclass(frozen=True, slots=True)
class CopyReport:
    entries: int
    pending: int
    soft: int
    history: int

    def __str__(self) -> str:
        return (
            f"{self.entries} entries, {self.pending} pending, {self.soft} soft-bounce counts,"
            f" {self.history} history records"
        )


def to_postgresql(local: sqlite3.Connection, pg: Any, node: str) -> tuple[CopyReport, int]:
    """Copy the local list into PostgreSQL's empty one; (what was copied, the new head seq)."""
    counts: dict[str, int] = {}
    with pg.transaction():
        seq, hseq = pg.execute(
            "SELECT seq, history_seq FROM fleet_meta WHERE id = 1 FOR UPDATE"
        ).fetchone()
        listed = pg.execute(
            "SELECT (SELECT count(*) FROM suppression) + (SELECT count(*) FROM suppression_pending)"
        ).fetchone()[0]
        if listed:
            raise UserError(
                f"the fleet's list in PostgreSQL is not empty ({listed} entries): copy founds a"
                " fleet from one list; to add another host's list, `suppression export` it and"
                " `suppression import` the file on a fleet node (it merges)"
            )
        now = time.time()
        for sqlite_table, pg_table, columns, tbl in _TABLES:
            n = 0
            with pg.cursor().copy(f"COPY {pg_table} ({columns}, seq) FROM STDIN") as cp:
                for row in local.execute(
                    f"SELECT {columns} FROM {sqlite_table} ORDER BY domain, local"
                ):
                    n += 1
                    cp.write_row((*row, seq + n))
            pg.execute(
                "INSERT INTO suppression_changes (seq, tbl, domain, local, at) "
                f"SELECT seq, %s, domain, local, %s FROM {pg_table}",
                (tbl, now),
            )
            seq += n
            counts[tbl] = n
        h = 0
        with pg.cursor().copy(f"COPY suppression_history (id, {_HISTORY}, node) FROM STDIN") as cp:
            for row in local.execute(f"SELECT {_HISTORY} FROM suppression_history ORDER BY id"):
                h += 1
                cp.write_row((hseq + h, *row, node))
        pg.execute("UPDATE fleet_meta SET seq = %s, history_seq = %s WHERE id = 1", (seq, hseq + h))
        if seq:
            pg.execute("SELECT pg_notify('smtpguard_suppression', %s)", (str(seq),))
    return CopyReport(counts["suppression"], counts["pending"], counts["soft"], h), seq


def to_sqlite(pg: Any, local: sqlite3.Connection, *, replace: bool) -> CopyReport:
    """Copy the fleet's list into the local SQLite (inside the caller's transaction)."""
    if not replace:
        listed = local.execute(
            "SELECT (SELECT count(*) FROM suppression) + (SELECT count(*) FROM suppression_pending)"
        ).fetchone()[0]
        if listed:
            raise UserError(
                f"the local list is not empty ({listed} entries): add --replace to replace it"
            )
    counts: dict[str, int] = {}
    with pg.transaction():
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        head = int(pg.execute("SELECT seq FROM fleet_meta WHERE id = 1").fetchone()[0])
        for sqlite_table, pg_table, columns, tbl in _TABLES:
            local.execute(f"DELETE FROM {sqlite_table}")
            marks = ", ".join("?" * len(columns.split(",")))
            sql = f"INSERT INTO {sqlite_table} ({columns}) VALUES ({marks})"
            n = 0
            with pg.cursor(name=f"smtpguard_copy_{tbl}") as cur:
                cur.itersize = 20_000
                cur.execute(f"SELECT {columns} FROM {pg_table} ORDER BY domain, local")
                while rows := cur.fetchmany(20_000):
                    local.executemany(sql, rows)
                    n += len(rows)
            counts[tbl] = n
        local.execute("DELETE FROM suppression_history")
        h = 0
        sql = f"INSERT INTO suppression_history (id, {_HISTORY}) VALUES ({', '.join('?' * 14)})"
        with pg.cursor(name="smtpguard_copy_history") as cur:
            cur.itersize = 20_000
            cur.execute(f"SELECT id, {_HISTORY_SIGNED} FROM suppression_history ORDER BY id")
            while rows := cur.fetchmany(20_000):
                local.executemany(sql, rows)
                h += len(rows)
        local.execute(
            "UPDATE suppression_meta SET value = "
            "(SELECT coalesce(max(id), 0) FROM suppression_history) WHERE key = 'history_seq'"
        )
        # A node of this fleet is now exactly at the fleet's head.
        if outbox.get_state(local, "node") is not None:
            outbox.set_state(local, "last_seq", head)
            outbox.set_state(local, "synced_at", repr(time.time()))
    return CopyReport(counts["suppression"], counts["pending"], counts["soft"], h)
