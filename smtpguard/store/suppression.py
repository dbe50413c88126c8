"""The suppression list: addresses (and whole domains) smtpguard must not send to.

The store stores; it decides nothing about evidence. Verdicts reach the list
only through the policy's sink (:mod:`smtpguard.policy.sink`), which writes
with the functions on a connection below (``write_observations``,
``put_pending``, ``note_dns_sighting``...) inside the caller's transaction, so
a bounce and the suppression it causes commit together. Operators' edits
(``suppression add``, ``remove``, ``import``, ``pending --confirm``) go through
:class:`SuppressionStore`. Both merge a sighting into a listed entry with the
policy's one pure rule, :func:`smtpguard.policy.merge.merge`; an import of only
new addresses takes a set-based shortcut that writes the same rows (a test
holds them equal).

Callers see :class:`SuppressionStore` (synchronous: CLI, milter, the relay's
RCPT check, benchmarks), :class:`AsyncSuppressionStore` (an event loop's
reads, with writes through the process's one writer thread) and the records
of :mod:`smtpguard.store.entries`. All SQL stays in this module, so a
networked backend for fleets of relays can later implement the same methods.

Every change writes one :class:`HistoryRecord` in the same transaction, so an
operator can always answer "why is this address suppressed, and since when?".
Times are unix epoch seconds (UTC); :func:`iso` renders them as ISO 8601.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from smtpguard.address import normalize_target
from smtpguard.policy.merge import merge
from smtpguard.store.db import (
    connect,
    connect_async,
    db_path,
    explained,
    iso,
    transaction,
)
from smtpguard.store.entries import (
    ACTIONS,
    SOURCES,
    SUPPRESSION_REASONS,
    HistoryRecord,
    HistoryRow,
    Observation,
    PendingEntry,
    SuppressionEntry,
    history_row,
    make_observation,
    observation_of,
)
from smtpguard.store.outbox import enabled as outbox_enabled
from smtpguard.store.outbox import entry_dict, obs_dict
from smtpguard.store.outbox import note as outbox_note
from smtpguard.store.outbox import note_many as outbox_note_many
from smtpguard.store.writer import DbThread, Writer, open_thread

__all__ = [
    "ACTIONS",
    "SOURCES",
    "SUPPRESSION_REASONS",
    "AsyncSuppressionStore",
    "BulkWriter",
    "HistoryRecord",
    "ListFilter",
    "Observation",
    "PendingEntry",
    "SuppressionEntry",
    "SuppressionStore",
    "iso",
    "make_observation",
]

# --------------------------------------------------------------------------- SQL

# A whole-domain entry is stored with local = ''; callers see "address" and "kind".
_ADDRESS_EXPR = "CASE WHEN local = '' THEN domain ELSE local || '@' || domain END"
_KIND_EXPR = "CASE WHEN local = '' THEN 'domain' ELSE 'address' END"
_COLUMNS = (
    f"{_ADDRESS_EXPR}, {_KIND_EXPR}, reason, status, reply_code, diagnostic, source, "
    "first_seen, last_seen, count, expires, evidence"
)
_SELECT = f"SELECT {_COLUMNS} FROM suppression"
# The address entry (non-empty local part) sorts before the domain entry ('').
_LOOKUP = (
    f"{_SELECT} WHERE domain = ? AND local IN (?, '') AND (expires IS NULL OR expires > ?) "
    "ORDER BY local DESC LIMIT 1"
)
_GET = f"{_SELECT} WHERE domain = ? AND local = ?"
_GET_MANY = (
    f"{_SELECT} WHERE (domain, local) IN "
    "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))"
)
_UPSERT = (
    "INSERT INTO suppression (domain, local, reason, status, reply_code, diagnostic, "
    "source, first_seen, last_seen, count, expires, evidence) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (domain, local) DO UPDATE SET "
    "reason = excluded.reason, status = excluded.status, reply_code = excluded.reply_code, "
    "diagnostic = excluded.diagnostic, source = excluded.source, "
    "first_seen = excluded.first_seen, last_seen = excluded.last_seen, "
    "count = excluded.count, expires = excluded.expires, evidence = excluded.evidence"
)
# Bulk writes are staged in a temporary table, then inserted in key order by
# SQLite's own sorter: a million random addresses become sequential B-tree appends.
_STAGE_COLUMNS = (
    "domain, local, address, kind, reason, status, reply_code, diagnostic, source, "
    "first_seen, last_seen, count, expires, note, at, evidence"
)
_STAGE_CREATE = f"CREATE TEMP TABLE IF NOT EXISTS suppression_bulk ({_STAGE_COLUMNS})"
_STAGE_INSERT = (
    f"INSERT INTO temp.suppression_bulk ({_STAGE_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Plain INSERT: an address already listed, or twice in the file, fails the
# statement (UNIQUE), and the writer falls back to merging row by row.
_STAGE_TO_ENTRIES = (
    "INSERT INTO main.suppression (domain, local, reason, status, reply_code, diagnostic, "
    "source, first_seen, last_seen, count, expires, evidence) SELECT domain, local, reason, "
    "status, reply_code, diagnostic, source, first_seen, last_seen, count, expires, evidence "
    "FROM temp.suppression_bulk ORDER BY domain, local"
)
_STAGE_READ = (
    "SELECT rowid, address, kind, reason, source, status, reply_code, diagnostic, expires, "
    "note, first_seen, last_seen, count, evidence FROM temp.suppression_bulk WHERE rowid > ? "
    "ORDER BY rowid LIMIT ?"
)
_STAGE_DROP = "DROP TABLE IF EXISTS temp.suppression_bulk"
# A fleet node's import: one outbox operation per new entry, as write_observations makes.
_STAGE_TO_OUTBOX = (
    "INSERT INTO main.fleet_outbox (at, op, domain, local, payload) "
    "SELECT at, 'observe', domain, local, json_object('obs', json_object("
    "'address', address, 'kind', kind, 'reason', reason, 'source', source, 'status', status, "
    "'reply_code', reply_code, 'diagnostic', diagnostic, 'expires', expires, 'note', note, "
    "'first_seen', first_seen, 'last_seen', last_seen, 'count', count, 'evidence', evidence), "
    "'actor', ?, 'now', at) FROM temp.suppression_bulk ORDER BY rowid"
)
_DELETE = "DELETE FROM suppression WHERE domain = ? AND local = ?"
_HISTORY_COLUMNS = (
    "address, kind, action, at, actor, note, old_reason, new_reason, source, status, "
    "reply_code, diagnostic, evidence"
)
_INSERT_HISTORY = (
    f"INSERT INTO suppression_history (id, {_HISTORY_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# History ids: the global order of changes, taken n at a time under the write lock.
_NEXT_IDS = (
    "UPDATE suppression_meta SET value = value + ? WHERE key = 'history_seq' RETURNING value"
)
_HISTORY_SEQ = "SELECT value FROM suppression_meta WHERE key = 'history_seq'"
_HISTORY = f"SELECT {_HISTORY_COLUMNS} FROM suppression_history WHERE address = ? ORDER BY id"
_STAGE_TO_HISTORY = (
    f"INSERT INTO main.suppression_history (id, {_HISTORY_COLUMNS}) "
    "SELECT ? + rowid, address, kind, 'added', at, ?, note, '', reason, source, status, "
    "reply_code, diagnostic, evidence FROM temp.suppression_bulk ORDER BY address, rowid"
)
_EXPIRED = "expires IS NOT NULL AND expires <= ?"
_COUNT_EXPIRED = f"SELECT count(*) FROM suppression WHERE {_EXPIRED}"
_PRUNE_HISTORY = (
    f"INSERT INTO suppression_history (id, {_HISTORY_COLUMNS}) "
    f"SELECT ? + row_number() OVER (ORDER BY domain, local), {_ADDRESS_EXPR}, {_KIND_EXPR}, "
    "'expired', ?, ?, ?, reason, reason, source, status, reply_code, diagnostic, evidence "
    f"FROM suppression WHERE {_EXPIRED}"
)
_PRUNE = f"DELETE FROM suppression WHERE {_EXPIRED}"

_PENDING_COLUMNS = f"{_COLUMNS}, destination, actor"
_PENDING_SELECT = f"SELECT {_PENDING_COLUMNS} FROM suppression_pending"
_PENDING_GET = f"{_PENDING_SELECT} WHERE domain = ? AND local = ?"
_PENDING_UPSERT = (
    "INSERT INTO suppression_pending (domain, local, reason, status, reply_code, diagnostic, "
    "source, first_seen, last_seen, count, expires, evidence, destination, actor) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (domain, local) DO UPDATE SET "
    "reason = excluded.reason, status = excluded.status, reply_code = excluded.reply_code, "
    "diagnostic = excluded.diagnostic, source = excluded.source, "
    "first_seen = excluded.first_seen, last_seen = excluded.last_seen, "
    "count = excluded.count, expires = excluded.expires, evidence = excluded.evidence, "
    "destination = excluded.destination, actor = excluded.actor"
)
_PENDING_DELETE = "DELETE FROM suppression_pending WHERE domain = ? AND local = ?"

_SIGHTING_GET = "SELECT first_seen, last_seen, count FROM dns_sightings WHERE domain = ?"
_SIGHTING_UPSERT = (
    "INSERT INTO dns_sightings (domain, reason, status, reply_code, diagnostic, first_seen, "
    "last_seen, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET "
    "reason = excluded.reason, status = excluded.status, reply_code = excluded.reply_code, "
    "diagnostic = excluded.diagnostic, first_seen = excluded.first_seen, "
    "last_seen = excluded.last_seen, count = excluded.count"
)


def _with_ids(rows: Sequence[HistoryRow], last_id: int) -> list[tuple[Any, ...]]:
    """History rows with their ids, ending at ``last_id`` (from :data:`_NEXT_IDS`)."""
    first = last_id - len(rows) + 1
    return [(first + i, *row) for i, row in enumerate(rows)]


def _entry(row: Iterable[Any]) -> SuppressionEntry:
    return SuppressionEntry(*row)


def _pending(row: Sequence[Any]) -> PendingEntry:
    return PendingEntry(SuppressionEntry(*row[:12]), row[12], row[13])


def entry_key(address: str, kind: str) -> tuple[str, str]:
    """(domain, local) of a normalised address or domain: the table's key (both backends)."""
    if kind == "domain":
        return address, ""
    local, _, domain = address.rpartition("@")
    return domain, local


def entry_row(e: SuppressionEntry) -> tuple[Any, ...]:
    """An entry as the list table's columns, in order (both backends)."""
    return (
        *entry_key(e.address, e.kind), e.reason, e.status, e.reply_code, e.diagnostic, e.source,
        e.first_seen, e.last_seen, e.count, e.expires, e.evidence,
    )  # fmt: skip


def _target_key(address: str) -> tuple[str, str]:
    """(domain, local) of an address or domain as a caller typed it."""
    kind, key = normalize_target(address)
    return entry_key(key, kind)


def _plan(
    existing: dict[str, SuppressionEntry], batch: list[Observation], actor: str, now: float
) -> tuple[list[tuple[Any, ...]], list[HistoryRow], list[tuple[SuppressionEntry, str]]]:
    """Apply the merge rule to a batch: rows to upsert, history rows, (entry, action)s.

    ``existing`` holds the stored entries for the batch's keys; it is updated as
    the batch goes, so an address twice in one batch merges with itself.
    """
    results: list[tuple[SuppressionEntry, str]] = []
    history: list[HistoryRow] = []
    final: dict[str, SuppressionEntry] = {}
    for obs in batch:
        new, rows, action = merge(existing.get(obs.address), obs, actor, now)
        existing[obs.address] = final[obs.address] = new
        history.extend(rows)
        results.append((new, action))
    return [entry_row(e) for e in final.values()], history, results


# --------------------------------------------------------------------------- writes on a connection
# Each runs inside the caller's transaction (the writer thread's, or one opened
# with store.db.transaction): the policy's sink and the stores share them.


def insert_history(conn: sqlite3.Connection, rows: Sequence[HistoryRow]) -> None:
    """Append history rows, numbered in the global order of changes."""
    if rows:
        last_id = conn.execute(_NEXT_IDS, (len(rows),)).fetchall()[0][0]
        conn.executemany(_INSERT_HISTORY, _with_ids(rows, last_id))


def write_observations(
    conn: sqlite3.Connection, batch: list[Observation], actor: str, now: float
) -> list[tuple[SuppressionEntry, str]]:
    """Merge sightings into the list; returns each one's (entry, action)."""
    if len(batch) == 1:
        rows = conn.execute(_GET, entry_key(batch[0].address, batch[0].kind)).fetchall()
    else:
        keys = json.dumps(list({entry_key(o.address, o.kind) for o in batch}))
        rows = conn.execute(_GET_MANY, (keys,)).fetchall()
    upserts, history, results = _plan({r[0]: _entry(r) for r in rows}, batch, actor, now)
    upserts.sort()  # key order: each B-tree page is visited once per batch
    conn.executemany(_UPSERT, upserts)
    insert_history(conn, history)
    if outbox_enabled(conn):
        ops = [
            (
                "observe",
                entry_key(o.address, o.kind),
                {"obs": obs_dict(o), "actor": actor, "now": now},
            )
            for o in batch
        ]
        outbox_note_many(conn, ops)
    return results


def listed(
    conn: sqlite3.Connection, address: str, kind: str, now: float
) -> SuppressionEntry | None:
    """The live (unexpired) entry for exactly this normalised address or domain."""
    row = conn.execute(_GET, entry_key(address, kind)).fetchone()
    if row is None:
        return None
    entry = _entry(row)
    return None if entry.expired(now) else entry


def record_history(
    conn: sqlite3.Connection, obs: Observation, action: str, actor: str, now: float
) -> None:
    """A history row for a sighting that changes no entry (``recorded``)."""
    insert_history(conn, [history_row(obs.entry(now), action, now, actor, obs.note, "")])
    outbox_note(
        conn, "history", ("", ""),
        {"obs": obs_dict(obs), "action": action, "actor": actor, "now": now},
    )  # fmt: skip


def put_pending(
    conn: sqlite3.Connection, obs: Observation, destination: str, actor: str, now: float
) -> PendingEntry:
    """Hold a sighting back as pending (merged with a pending one for the address)."""
    key = entry_key(obs.address, obs.kind)
    row = conn.execute(_PENDING_GET, key).fetchone()
    old = _pending(row) if row is not None else None
    entry, _, _ = merge(old.entry if old else None, obs, actor, now)
    conn.execute(_PENDING_UPSERT, (*entry_row(entry), destination, actor))
    insert_history(conn, [history_row(entry, "pending", now, actor, obs.note, "")])
    outbox_note(
        conn, "pending", key,
        {"obs": obs_dict(obs), "destination": destination, "actor": actor, "now": now},
    )  # fmt: skip
    return PendingEntry(entry, destination, actor)


def take_pending(conn: sqlite3.Connection, address: str, kind: str) -> PendingEntry | None:
    """Remove and return the pending entry for a normalised address, if any."""
    key = entry_key(address, kind)
    row = conn.execute(_PENDING_GET, key).fetchone()
    if row is None:
        return None
    conn.execute(_PENDING_DELETE, key)
    return _pending(row)


def confirm_pending(
    conn: sqlite3.Connection, address: str, kind: str, actor: str, now: float, note: str
) -> SuppressionEntry | None:
    """Enforce a pending entry (history ``confirmed``); None if there was none."""
    pending = take_pending(conn, address, kind)
    if pending is None:
        return None
    outbox_note(
        conn, "confirm", entry_key(address, kind),
        {"entry": entry_dict(pending.entry), "actor": actor, "now": now, "note": note},
    )  # fmt: skip
    obs = observation_of(pending.entry, note)
    old = listed(conn, address, kind, now)
    entry, rows, action = merge(old, obs, actor, now)
    if action == "added":
        rows[-1] = (*rows[-1][:2], "confirmed", *rows[-1][3:])
    conn.execute(_UPSERT, entry_row(entry))
    insert_history(conn, rows)
    return entry


def discard_pending(
    conn: sqlite3.Connection, address: str, kind: str, actor: str, now: float, note: str
) -> PendingEntry | None:
    """Drop a pending entry (history ``discarded``); None if there was none."""
    pending = take_pending(conn, address, kind)
    if pending is not None:
        e = pending.entry
        insert_history(conn, [history_row(e, "discarded", now, actor, note, e.reason)])
        outbox_note(
            conn, "discard", entry_key(address, kind),
            {"entry": entry_dict(e), "actor": actor, "now": now, "note": note},
        )  # fmt: skip
    return pending


def pending_page(
    conn: sqlite3.Connection, destination: str | None, after: str | None, limit: int | None
) -> list[PendingEntry]:
    """Pending entries in address order (one destination's, or all)."""
    where: list[str] = []
    params: list[Any] = []
    if destination is not None:
        where.append("destination = ?")
        params.append(destination)
    if after is not None:
        where.append("(domain, local) > (?, ?)")
        params.extend(_target_key(after))
    sql = _PENDING_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY domain, local"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_pending(r) for r in conn.execute(sql, params)]


def pending_destinations(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT destination FROM suppression_pending")}


def note_dns_sighting(
    conn: sqlite3.Connection, obs: Observation, now: float, *, stale_after: float
) -> tuple[float, int]:
    """Record that DNS said ``obs.address`` (a domain) is dead; ``(first_seen, count)``.

    A sighting run older than ``stale_after`` (its last sighting) starts afresh.
    """
    row = conn.execute(_SIGHTING_GET, (obs.address,)).fetchone()
    first, count = now, 1
    if row is not None and now - row[1] <= stale_after:
        first, count = min(row[0], now), row[2] + 1
    conn.execute(
        _SIGHTING_UPSERT,
        (obs.address, obs.reason, obs.status, obs.reply_code, obs.diagnostic, first, now, count),
    )
    return first, count


def forget_dns_sighting(conn: sqlite3.Connection, domain: str) -> None:
    conn.execute("DELETE FROM dns_sightings WHERE domain = ?", (domain,))


def dns_sighting_domains(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT domain FROM dns_sightings")}


def prune_dns_sightings(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM dns_sightings WHERE last_seen < ?", (before,)).rowcount


def note_soft_bounce(
    conn: sqlite3.Connection, obs: Observation, now: float, *, stale_after: float
) -> tuple[float, int]:
    """Count a soft bounce of ``obs.address``; ``(first_seen, count)`` of its run.

    A run whose last soft bounce is older than ``stale_after`` starts afresh.
    """
    key = entry_key(obs.address, obs.kind)
    row = conn.execute(
        "SELECT first_seen, last_seen, count FROM soft_bounces WHERE domain = ? AND local = ?", key
    ).fetchone()
    first, count = now, 1
    if row is not None and now - row[1] <= stale_after:
        first, count = min(row[0], now), row[2] + 1
    conn.execute(
        "INSERT INTO soft_bounces (domain, local, reason, first_seen, last_seen, count) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, local) DO UPDATE SET "
        "reason = excluded.reason, first_seen = excluded.first_seen, "
        "last_seen = excluded.last_seen, count = excluded.count",
        (*key, obs.reason, first, now, count),
    )
    outbox_note(conn, "soft", key, {"obs": obs_dict(obs), "now": now, "stale_after": stale_after})
    return first, count


def clear_soft_bounces(
    conn: sqlite3.Connection, address: str, actor: str, now: float, note: str
) -> bool:
    """Forget an address's soft bounces (history ``discarded``); False if it had none."""
    key = entry_key(address, "address")
    row = conn.execute(
        "SELECT reason, first_seen, last_seen, count FROM soft_bounces "
        "WHERE domain = ? AND local = ?",
        key,
    ).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM soft_bounces WHERE domain = ? AND local = ?", key)
    reason, first, last, count = row
    e = SuppressionEntry(address, "address", reason, "", "", "", "", first, last, count, None)
    insert_history(conn, [history_row(e, "discarded", now, actor, note, reason)])
    outbox_note(conn, "soft-clear", key, {"actor": actor, "now": now, "note": note})
    return True


def forget_soft_bounces(conn: sqlite3.Connection, address: str) -> None:
    key = entry_key(address, "address")
    conn.execute("DELETE FROM soft_bounces WHERE domain = ? AND local = ?", key)
    outbox_note(conn, "soft-forget", key, {})


def soft_bounce_addresses(conn: sqlite3.Connection) -> set[str]:
    return {
        f"{local}@{domain}"
        for domain, local in conn.execute("SELECT domain, local FROM soft_bounces")
    }


def prune_soft_bounces(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM soft_bounces WHERE last_seen < ?", (before,)).rowcount


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ListFilter:
    """What ``list`` shows: all filters optional, combined with AND."""

    reason: str | None = None
    domain: str | None = None
    source: str | None = None
    since: float | None = None  # first_seen at or after
    kind: str | None = None
    include_expired: bool = False
    evidence: str | None = None


def _list_query(
    f: ListFilter, after: str | None, limit: int | None, now: float
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if after is not None:
        where.append("(domain, local) > (?, ?)")
        params.extend(_target_key(after))
    for column, value in (
        ("reason", f.reason), ("domain", f.domain), ("source", f.source),
        ("evidence", f.evidence),
    ):  # fmt: skip
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if f.kind is not None:
        where.append("local = ''" if f.kind == "domain" else "local <> ''")
    if f.since is not None:
        where.append("first_seen >= ?")
        params.append(f.since)
    if not f.include_expired:
        where.append("(expires IS NULL OR expires > ?)")
        params.append(now)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY domain, local"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


def _group_counts(conn: sqlite3.Connection, column: str, now: float) -> dict[str, int]:
    return dict(
        conn.execute(
            f"SELECT {column}, count(*) FROM suppression WHERE (expires IS NULL OR expires > ?) "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            (now,),
        ).fetchall()
    )


# --------------------------------------------------------------------------- sync store


class SuppressionStore:
    """The suppression list over a synchronous sqlite3 connection (CLI, milter, tools).

    Every write is one transaction (:func:`smtpguard.store.db.transaction`);
    sqlite3 errors become one-line :class:`StoreError`.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        row = conn.execute("PRAGMA database_list").fetchone()
        self._path = Path(row[2]) if row and row[2] else Path(":memory:")

    @classmethod
    def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0, create: bool = True,
        group: str = "",
    ) -> SuppressionStore:  # fmt: skip
        """Open (creating and migrating if needed) the store under ``data_dir``."""
        return cls(connect(data_dir, busy_timeout=busy_timeout, create=create, group=group))

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SuppressionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return explained(self._path)

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, self._path)

    # -- the narrow interface

    def lookup(self, address: str, *, now: float | None = None) -> SuppressionEntry | None:
        """The entry suppressing ``address``: its own entry, else its domain's.

        Expired entries are ignored (as if already pruned). ``address`` may
        also be a domain (``example.com``) to look up a whole-domain entry.
        """
        return self.lookup_key(*_target_key(address), now=now)

    def lookup_key(
        self, domain: str, local: str, *, now: float | None = None
    ) -> SuppressionEntry | None:
        """:meth:`lookup` for an address already normalised and split (the RCPT path)."""
        with self._errors():
            row = self._conn.execute(
                _LOOKUP, (domain, local, time.time() if now is None else now)
            ).fetchone()
        return None if row is None else _entry(row)

    def get(self, address: str) -> SuppressionEntry | None:
        """The stored entry for exactly this address or domain, expired or not."""
        with self._errors():
            row = self._conn.execute(_GET, _target_key(address)).fetchone()
        return None if row is None else _entry(row)

    def record(
        self,
        address: str,
        reason: str,
        *,
        source: str = "",
        evidence: str = "",
        actor: str,
        status: str = "",
        reply_code: str = "",
        diagnostic: str = "",
        expires: float | None = None,
        note: str = "",
        kind: str = "address",
    ) -> SuppressionEntry:
        """Add ``address`` or, if present, merge the sighting (an operator's write).

        ``kind="domain"`` records a whole domain (``address`` is then the domain).
        Raises :class:`~smtpguard.errors.AddressError` for an invalid address,
        :class:`~smtpguard.errors.UserError` for an unknown reason, source or
        evidence kind or a malformed status / reply code,
        :class:`~smtpguard.errors.StoreError` when the database fails (locked past
        the busy timeout, corrupt, read-only); nothing is written in any of these cases.
        """
        obs = make_observation(
            address, reason, source=source, evidence=evidence, kind=kind, status=status,
            reply_code=reply_code, diagnostic=diagnostic, expires=expires, note=note,
        )  # fmt: skip
        return self.record_observation(obs, actor=actor)

    def record_observation(
        self, obs: Observation, *, actor: str, now: float | None = None
    ) -> SuppressionEntry:
        with self._transaction() as conn:
            return write_observations(conn, [obs], actor, time.time() if now is None else now)[0][0]

    def remove(self, address: str, *, actor: str, note: str = "") -> bool:
        """Take ``address`` (or a domain) off the list; False if it was not on it."""
        with self._transaction() as conn:
            return remove_entry(conn, _target_key(address), actor, note, time.time())

    def history(self, address: str) -> list[HistoryRecord]:
        """Every change to ``address`` (or a domain's entry), oldest first."""
        _, key = normalize_target(address)
        with self._errors():
            return [HistoryRecord(*r) for r in self._conn.execute(_HISTORY, (key,))]

    # -- pending entries (held back by the storm breaker)

    def pending(
        self, *, destination: str | None = None, after: str | None = None, limit: int | None = None
    ) -> list[PendingEntry]:
        """Pending entries in address order, optionally of one destination."""
        with self._errors():
            return pending_page(self._conn, destination, after, limit)

    def get_pending(self, address: str) -> PendingEntry | None:
        with self._errors():
            row = self._conn.execute(_PENDING_GET, _target_key(address)).fetchone()
        return None if row is None else _pending(row)

    def settle_pending(
        self, addresses: Sequence[str], *, confirm: bool, actor: str, note: str = ""
    ) -> list[str]:
        """Confirm (enforce) or discard pending entries; returns those that were pending.

        One transaction for all of them.
        """
        now = time.time()
        settled: list[str] = []
        keys = [normalize_target(a) for a in addresses]
        with self._transaction() as conn:
            for kind, key in keys:
                settle = confirm_pending if confirm else discard_pending
                if settle(conn, key, kind, actor, now, note) is not None:
                    settled.append(key)
        return settled

    # -- operator tools (CLI)

    def list_page(
        self,
        filters: ListFilter | None = None,
        *,
        after: str | None = None,
        limit: int | None = 100,
        now: float | None = None,
    ) -> list[SuppressionEntry]:
        """One page in address order; pass the last address shown as ``after``.

        Keyset paging: the next page starts with an index seek, so page 10,000
        costs what page 1 costs.
        """
        sql, params = _list_query(
            filters or ListFilter(), after, limit, time.time() if now is None else now
        )
        with self._errors():
            return [_entry(r) for r in self._conn.execute(sql, params)]

    def iter_entries(
        self, filters: ListFilter | None = None, *, now: float | None = None
    ) -> Iterator[SuppressionEntry]:
        """Stream every matching entry (export) without holding them all in memory."""
        sql, params = _list_query(
            filters or ListFilter(include_expired=True),
            None,
            None,
            time.time() if now is None else now,
        )
        with self._errors():
            for row in self._conn.execute(sql, params):
                yield _entry(row)

    @contextmanager
    def bulk(
        self, *, actor: str, batch_size: int = 20_000, cache_mib: int = 64
    ) -> Iterator[BulkWriter]:
        """One transaction for many sightings: all are written, or (on any
        exception inside the block) none are.

        Holds the write lock for the whole block: other writers (the relay
        recording a bounce) wait up to their busy timeout; readers are never
        blocked (WAL). For speed the page cache grows to ``cache_mib`` for the
        duration (a million-row import touches every page of the table), and
        Python's cyclic GC pauses (the batches create no cycles, only garbage
        that reference counting frees).
        """
        with self._errors():
            old_cache = self._conn.execute("PRAGMA cache_size").fetchone()[0]
            self._conn.execute(f"PRAGMA cache_size = {-1024 * int(cache_mib)}")
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self._transaction():
                writer = BulkWriter(self._conn, self._path, actor, batch_size)
                yield writer
                writer._finish()
        finally:
            if gc_was_enabled:
                gc.enable()
            with self._errors():
                self._conn.execute(f"PRAGMA cache_size = {int(old_cache)}")

    def prune(self, *, actor: str, now: float | None = None, note: str = "") -> int:
        """Delete expired entries, each with an ``expired`` history record."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            expired = conn.execute(_COUNT_EXPIRED, (now,)).fetchone()[0]
            if not expired:
                return 0
            last_id = conn.execute(_NEXT_IDS, (expired,)).fetchall()[0][0]
            conn.execute(_PRUNE_HISTORY, (last_id - expired, now, actor, note, now))
            outbox_note(conn, "prune", ("", ""), {"actor": actor, "now": now, "note": note})
            return conn.execute(_PRUNE, (now,)).rowcount

    def stats(self, *, now: float | None = None) -> dict[str, Any]:
        """Counts for ``smtpguard suppression stats``."""
        now = time.time() if now is None else now
        with self._errors():
            c = self._conn
            live = "(expires IS NULL OR expires > ?)"
            total, addresses, domains, expired, with_expiry = c.execute(
                "SELECT count(*), "
                f"coalesce(sum(local <> '' AND {live}), 0), "
                f"coalesce(sum(local = '' AND {live}), 0), "
                "coalesce(sum(expires IS NOT NULL AND expires <= ?), 0), "
                f"coalesce(sum(expires IS NOT NULL AND {live}), 0) FROM suppression",
                (now, now, now, now),
            ).fetchone()
            recent = {
                label: c.execute(
                    f"SELECT count(*) FROM suppression WHERE first_seen >= ? AND {live}",
                    (now - seconds, now),
                ).fetchone()[0]
                for label, seconds in (("24h", 86400), ("7d", 7 * 86400))
            }
            history = c.execute(_HISTORY_SEQ).fetchone()[0]
            pending = c.execute("SELECT count(*) FROM suppression_pending").fetchone()[0]
            return {
                "active": addresses + domains,
                "addresses": addresses,
                "domains": domains,
                "expired_unpruned": expired,
                "with_expiry": with_expiry,
                "stored": total,
                "added_24h": recent["24h"],
                "added_7d": recent["7d"],
                "history_records": history,
                "pending": pending,
                "by_reason": _group_counts(c, "reason", now),
                "by_source": _group_counts(c, "source", now),
                "by_evidence": _group_counts(c, "evidence", now),
            }


def remove_entry(
    conn: sqlite3.Connection, key: tuple[str, str], actor: str, note: str, now: float
) -> bool:
    """Delete one entry by its (domain, local) key, with a ``removed`` history row."""
    row = conn.execute(_GET, key).fetchone()
    if row is None:
        return False
    old = _entry(row)
    conn.execute(_DELETE, key)
    insert_history(conn, [history_row(old, "removed", now, actor, note, old.reason)])
    outbox_note(conn, "remove", key, {"actor": actor, "note": note, "now": now})
    return True


class BulkWriter:
    """Collects sightings inside :meth:`SuppressionStore.bulk` and writes them at the end.

    Rows are staged in a temporary table as they come (bounded memory), then
    moved in key order in one statement per table. That is only right when
    every address is new (the usual import into a fresh list); if any is
    already listed or repeats, the staged rows are instead merged batch by
    batch with the policy's merge rule, exactly as :meth:`SuppressionStore.record` would.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, actor: str, batch_size: int) -> None:
        self._conn = conn
        self._path = path
        self._actor = actor
        self._batch_size = batch_size
        self._buffer: list[tuple[Any, ...]] = []
        self._staged = 0
        self.counts: dict[str, int] = {"added": 0, "escalated": 0, "updated": 0}
        with explained(path):
            conn.execute(_STAGE_DROP)
            conn.execute(_STAGE_CREATE)

    def add(self, obs: Observation) -> None:
        now = time.time()
        first = obs.first_seen if obs.first_seen is not None else now
        last = obs.last_seen if obs.last_seen is not None else max(now, first)
        domain, local = entry_key(obs.address, obs.kind)
        self._buffer.append(
            (
                domain, local, obs.address, obs.kind, obs.reason, obs.status, obs.reply_code,
                obs.diagnostic, obs.source, first, last, obs.count, obs.expires, obs.note, now,
                obs.evidence,
            )
        )  # fmt: skip
        if len(self._buffer) >= self._batch_size:
            self._stage()

    def _stage(self) -> None:
        if self._buffer:
            with explained(self._path):
                self._conn.executemany(_STAGE_INSERT, self._buffer)
            self._staged += len(self._buffer)
            self._buffer = []

    def _finish(self) -> None:
        """Move the staged rows into the list (inside the caller's transaction)."""
        self._stage()
        conn = self._conn
        with explained(self._path):
            if self._staged:
                conn.execute("SAVEPOINT suppression_bulk_sorted")
                try:
                    conn.execute(_STAGE_TO_ENTRIES)
                except sqlite3.IntegrityError:
                    conn.execute("ROLLBACK TO suppression_bulk_sorted")
                    conn.execute("RELEASE suppression_bulk_sorted")
                    self._merge_staged()
                else:
                    last_id = conn.execute(_NEXT_IDS, (self._staged,)).fetchall()[0][0]
                    conn.execute(_STAGE_TO_HISTORY, (last_id - self._staged, self._actor))
                    if outbox_enabled(conn):
                        conn.execute(_STAGE_TO_OUTBOX, (self._actor,))
                    conn.execute("RELEASE suppression_bulk_sorted")
                    self.counts["added"] += self._staged
            conn.execute(_STAGE_DROP)

    def _merge_staged(self) -> None:
        """Slow path: merge the staged rows, in file order, batch by batch."""
        conn = self._conn
        after = 0
        while True:
            rows = conn.execute(_STAGE_READ, (after, self._batch_size)).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            batch = [Observation(*row[1:]) for row in rows]
            for _, action in write_observations(conn, batch, self._actor, time.time()):
                self.counts[action] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- async store


class AsyncSuppressionStore:
    """The same list for an event loop: reads over aiosqlite, writes through a writer.

    aiosqlite runs SQLite in its own thread, so a disk wait never blocks the
    loop. Writes go through the process's one writer thread (the one given, or
    one of its own), the same path the sink uses, so a process never holds two
    write connections of its own.
    """

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, writer: Writer, owned: DbThread | None
    ) -> None:
        self._conn = conn
        self._path = path
        self._writer = writer
        self._owned = owned

    @classmethod
    async def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0, writer: Writer | None = None,
        group: str = "",
    ) -> AsyncSuppressionStore:  # fmt: skip
        conn = await connect_async(data_dir, busy_timeout=busy_timeout, group=group)
        owned = None
        if writer is None:
            writer = owned = await open_thread(
                data_dir, busy_timeout=busy_timeout, transactional=True, name="writer",
                group=group,
            )  # fmt: skip
        return cls(conn, db_path(data_dir), writer, owned)

    async def close(self) -> None:
        await self._conn.close()
        if self._owned is not None:
            self._owned.close()

    async def __aenter__(self) -> AsyncSuppressionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def lookup(self, address: str, *, now: float | None = None) -> SuppressionEntry | None:
        """See :meth:`SuppressionStore.lookup`."""
        domain, local = _target_key(address)
        with explained(self._path):
            async with self._conn.execute(
                _LOOKUP, (domain, local, time.time() if now is None else now)
            ) as cur:
                row = await cur.fetchone()
        return None if row is None else _entry(row)

    async def record(
        self,
        address: str,
        reason: str,
        *,
        source: str = "",
        evidence: str = "",
        actor: str,
        status: str = "",
        reply_code: str = "",
        diagnostic: str = "",
        expires: float | None = None,
        note: str = "",
        kind: str = "address",
    ) -> SuppressionEntry:
        """See :meth:`SuppressionStore.record`."""
        obs = make_observation(
            address, reason, source=source, evidence=evidence, kind=kind, status=status,
            reply_code=reply_code, diagnostic=diagnostic, expires=expires, note=note,
        )  # fmt: skip
        now = time.time()
        results = await self._writer.call(lambda c: write_observations(c, [obs], actor, now))
        return results[0][0]

    async def remove(self, address: str, *, actor: str, note: str = "") -> bool:
        """See :meth:`SuppressionStore.remove`."""
        key, now = _target_key(address), time.time()
        return await self._writer.call(lambda c: remove_entry(c, key, actor, note, now))

    async def history(self, address: str) -> list[HistoryRecord]:
        """See :meth:`SuppressionStore.history`."""
        _, key = normalize_target(address)
        with explained(self._path):
            async with self._conn.execute(_HISTORY, (key,)) as cur:
                return [HistoryRecord(*r) async for r in cur]
