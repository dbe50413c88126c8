"""The suppression list: addresses (and whole domains) smtpguard must not send to.

Callers see only :class:`SuppressionStore` (synchronous: CLI, milter,
benchmarks), :class:`AsyncSuppressionStore` (the relay's event loop) and the
records :class:`SuppressionEntry`, :class:`HistoryRecord` and
:class:`Observation`. All SQL stays in this module, so a networked backend for
fleets of relays can later implement the same methods.

What happens when a bad address is seen again is decided in one pure function,
:func:`_merge`, shared by both stores and by bulk import, so the relay, the
CLI and an import of a million rows give the same answer (an import of only
new addresses takes a set-based shortcut that writes the same rows; a test
holds them equal):

* a new address is **added**;
* a stronger reason **escalates** the entry (``mailboxfull`` -> ``userunknown``
  -> ``complaint``; see :func:`reason_rank`): the reason and its evidence
  (status, reply code, diagnostic, source) are replaced;
* anything else is **updated** (seen again): ``last_seen`` and ``count`` move,
  the stronger reason stays, a weaker one is only noted in the history;
* an entry whose expiry has passed counts as gone: it is **expired** in the
  history and the new sighting is **added** afresh.

Every change writes one :class:`HistoryRecord` in the same transaction, so an
operator can always answer "why is this address suppressed, and since when?".
Times are unix epoch seconds (UTC); :func:`iso` renders them as ISO 8601.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite

from smtpguard.address import normalize_address, normalize_domain, normalize_target
from smtpguard.classify.verdict import REASONS, SUPPRESS_REASONS
from smtpguard.errors import UserError
from smtpguard.store.db import connect, connect_async, db_path, explain, iso

__all__ = [
    "ACTIONS",
    "SOURCES",
    "SUPPRESSION_REASONS",
    "AsyncSuppressionStore",
    "BulkWriter",
    "HistoryRecord",
    "ListFilter",
    "Observation",
    "SuppressionEntry",
    "SuppressionStore",
    "iso",
    "make_observation",
    "reason_rank",
]

#: Why an address may be suppressed: the classifier's vocabulary (Sisimai v5)
#: without the two that are not failures at all, plus ``complaint`` (an ARF
#: report, an ESP's spam report), ``unsubscribe`` (the recipient asked to get no
#: more mail: an unsubscribe link, an ESP's opt-out list) and ``manual`` (an
#: operator's decision).
SUPPRESSION_REASONS = frozenset(
    (REASONS - {"delivered", "vacation"}) | {"complaint", "unsubscribe", "manual"}
)
#: Where the knowledge came from.
SOURCES = ("smtp-reply", "dsn", "arf", "log", "manual", "import")
#: History actions.
ACTIONS = ("added", "escalated", "updated", "removed", "expired")

# Strength of a reason: a sighting with a higher rank escalates an entry.
# 3: a person decided (the recipient complained or unsubscribed, or the operator
#    said so); never overridden by a machine's bounce.
# 2: the address itself is provably bad (Sisimai's hard-bounce reasons).
# 1: everything else (soft reasons, recorded by hand or imported).
_PERSON_REASONS = frozenset({"complaint", "unsubscribe", "manual", "feedback"})


def reason_rank(reason: str) -> int:
    """How strong a reason for suppression is (higher wins; see module doc)."""
    if reason in _PERSON_REASONS:
        return 3
    if reason in SUPPRESS_REASONS:
        return 2
    return 1


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """One suppressed address (``kind="address"``) or whole domain (``kind="domain"``)."""

    address: str  # normalised address, or the domain for kind="domain"
    kind: str
    reason: str
    status: str  # RFC 3463 enhanced status of the evidence, e.g. "5.1.1"
    reply_code: str  # SMTP reply code of the evidence, e.g. "550"
    diagnostic: str
    source: str  # one of SOURCES
    first_seen: float
    last_seen: float
    count: int
    expires: float | None

    @property
    def domain(self) -> str:
        return self.address if self.kind == "domain" else self.address.rpartition("@")[2]

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (time.time() if now is None else now)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, times as ISO 8601 UTC (the export/import format)."""
        return {
            "address": self.address,
            "kind": self.kind,
            "reason": self.reason,
            "status": self.status,
            "reply_code": self.reply_code,
            "diagnostic": self.diagnostic,
            "source": self.source,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "count": self.count,
            "expires": iso(self.expires) or None,
        }


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One change to the list: who did what, when, and with which evidence."""

    address: str
    kind: str
    action: str  # one of ACTIONS
    at: float
    actor: str  # "relay", "cli:root", "import:bounces.csv", ...
    note: str
    old_reason: str
    new_reason: str
    source: str
    status: str
    reply_code: str
    diagnostic: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = iso(self.at)
        return d


@dataclass(slots=True)
class Observation:
    """A sighting of a bad address, validated and normalised, ready to record.

    Build it with :func:`make_observation`. ``first_seen``/``last_seen`` None
    mean "now"; an import may carry its own times and counts. Treat it as
    immutable; it is not frozen only because a million-row import creates a
    million of them and frozen construction costs several times more.
    """

    address: str
    kind: str
    reason: str
    source: str
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    expires: float | None = None
    note: str = ""
    first_seen: float | None = None
    last_seen: float | None = None
    count: int = 1


_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_REPLY_CODE = re.compile(r"[2-5]\d\d")
_WHITESPACE = re.compile(r"\s+")
MAX_DIAGNOSTIC = 1000


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a time in epoch seconds, not {value!r}")
    return float(value)


def make_observation(
    address: str,
    reason: str,
    *,
    source: str,
    kind: str | None = "address",
    status: str = "",
    reply_code: str = "",
    diagnostic: str = "",
    expires: float | None = None,
    note: str = "",
    first_seen: float | None = None,
    last_seen: float | None = None,
    count: int = 1,
) -> Observation:
    """Validate and normalise one sighting; raise a :class:`UserError` naming the problem.

    ``kind=None`` infers it: ``example.com`` or ``@example.com`` is a domain.
    """
    if kind is None:
        kind, key = normalize_target(address)
    elif kind == "address":
        key = normalize_address(address)
    elif kind == "domain":
        key = normalize_domain(address.strip().removeprefix("@"))
    else:
        raise UserError(f"kind must be 'address' or 'domain', not {kind!r}")
    if reason not in SUPPRESSION_REASONS:
        raise UserError(
            f"unknown reason {reason!r} (known: {', '.join(sorted(SUPPRESSION_REASONS))})"
        )
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    status = status.strip()
    if status and not _STATUS.fullmatch(status):
        raise UserError(f"status must be an RFC 3463 code like 5.1.1, not {status!r}")
    reply_code = reply_code.strip()
    if reply_code and not _REPLY_CODE.fullmatch(reply_code):
        raise UserError(f"reply code must be three digits like 550, not {reply_code!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"count must be a whole number of at least 1, not {count!r}")
    # Diagnostics arrive folded over several lines; one line keeps tables and CSV sane.
    if diagnostic:
        diagnostic = _WHITESPACE.sub(" ", diagnostic).strip()[:MAX_DIAGNOSTIC]
    if note:
        note = _WHITESPACE.sub(" ", note).strip()
    first = last = None
    if first_seen is not None or last_seen is not None:
        first = _finite("first_seen", first_seen)
        last = _finite("last_seen", last_seen)
        if first is not None and last is not None and last < first:
            raise UserError("last_seen is before first_seen")
    return Observation(
        address=key,
        kind=kind,
        reason=reason,
        source=source,
        status=status,
        reply_code=reply_code,
        diagnostic=diagnostic,
        expires=_finite("expires", expires),
        note=note,
        first_seen=first,
        last_seen=last,
        count=count,
    )


# --------------------------------------------------------------------------- merge rule

# (address, kind, action, at, actor, note, old_reason, new_reason, source, status,
#  reply_code, diagnostic): the suppression_history row, in column order.
_HistoryRow = tuple[str, str, str, float, str, str, str, str, str, str, str, str]


def _history_row(
    e: SuppressionEntry, action: str, at: float, actor: str, note: str, old_reason: str
) -> _HistoryRow:
    return (
        e.address,
        e.kind,
        action,
        at,
        actor,
        note,
        old_reason,
        e.reason,
        e.source,
        e.status,
        e.reply_code,
        e.diagnostic,
    )


def _merge(
    old: SuppressionEntry | None, obs: Observation, actor: str, now: float
) -> tuple[SuppressionEntry, list[_HistoryRow], str]:
    """The entry after ``obs``, the history rows that explain it, and the action."""
    first = obs.first_seen if obs.first_seen is not None else now
    last = obs.last_seen if obs.last_seen is not None else max(now, first)
    history: list[_HistoryRow] = []
    if old is not None and old.expired(now):
        history.append(_history_row(old, "expired", now, actor, "expired before seen again", ""))
        old = None
    if old is None:
        new = SuppressionEntry(
            address=obs.address,
            kind=obs.kind,
            reason=obs.reason,
            status=obs.status,
            reply_code=obs.reply_code,
            diagnostic=obs.diagnostic,
            source=obs.source,
            first_seen=first,
            last_seen=last,
            count=obs.count,
            expires=obs.expires,
        )
        history.append(_history_row(new, "added", now, actor, obs.note, ""))
        return new, history, "added"

    action = "escalated" if reason_rank(obs.reason) > reason_rank(old.reason) else "updated"
    # The entry keeps the strongest reason, and the evidence that goes with it:
    # replaced on escalation, refreshed when the same reason is seen again.
    if action == "escalated":
        evidence = (obs.reason, obs.status, obs.reply_code, obs.diagnostic, obs.source)
    elif obs.reason == old.reason:
        evidence = (
            old.reason,
            obs.status or old.status,
            obs.reply_code or old.reply_code,
            obs.diagnostic or old.diagnostic,
            obs.source,
        )
    else:
        evidence = (old.reason, old.status, old.reply_code, old.diagnostic, old.source)
    # An entry without expiry is permanent; otherwise the later expiry wins.
    expires = None if old.expires is None or obs.expires is None else max(old.expires, obs.expires)
    reason, status, reply_code, diagnostic, source = evidence
    new = replace(
        old,
        reason=reason,
        status=status,
        reply_code=reply_code,
        diagnostic=diagnostic,
        source=source,
        first_seen=min(old.first_seen, first),
        last_seen=max(old.last_seen, last),
        count=old.count + obs.count,
        expires=expires,
    )
    row = _history_row(new, action, now, actor, obs.note, old.reason)
    if action == "updated" and obs.reason != new.reason:
        # A weaker reason seen again: the entry keeps its reason, the history
        # keeps what was seen.
        row = (*row[:7], obs.reason, obs.source, obs.status, obs.reply_code, obs.diagnostic)
    history.append(row)
    return new, history, action


# --------------------------------------------------------------------------- SQL

# A whole-domain entry is stored with local = ''; callers see "address" and "kind".
_ADDRESS_EXPR = "CASE WHEN local = '' THEN domain ELSE local || '@' || domain END"
_KIND_EXPR = "CASE WHEN local = '' THEN 'domain' ELSE 'address' END"
_COLUMNS = (
    f"{_ADDRESS_EXPR}, {_KIND_EXPR}, reason, status, reply_code, diagnostic, source, "
    "first_seen, last_seen, count, expires"
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
    "source, first_seen, last_seen, count, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (domain, local) DO UPDATE SET "
    "reason = excluded.reason, status = excluded.status, reply_code = excluded.reply_code, "
    "diagnostic = excluded.diagnostic, source = excluded.source, "
    "first_seen = excluded.first_seen, last_seen = excluded.last_seen, "
    "count = excluded.count, expires = excluded.expires"
)
# Bulk writes are staged in a temporary table, then inserted in key order by
# SQLite's own sorter: a million random addresses become sequential B-tree appends.
_STAGE_COLUMNS = (
    "domain, local, address, kind, reason, status, reply_code, diagnostic, source, "
    "first_seen, last_seen, count, expires, note, at"
)
_STAGE_CREATE = f"CREATE TEMP TABLE IF NOT EXISTS suppression_bulk ({_STAGE_COLUMNS})"
_STAGE_INSERT = (
    f"INSERT INTO temp.suppression_bulk ({_STAGE_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Plain INSERT: an address already listed, or twice in the file, fails the
# statement (UNIQUE), and the writer falls back to merging row by row.
_STAGE_TO_ENTRIES = (
    "INSERT INTO main.suppression (domain, local, reason, status, reply_code, diagnostic, "
    "source, first_seen, last_seen, count, expires) SELECT domain, local, reason, status, "
    "reply_code, diagnostic, source, first_seen, last_seen, count, expires "
    "FROM temp.suppression_bulk ORDER BY domain, local"
)
_STAGE_READ = (
    "SELECT rowid, address, kind, reason, source, status, reply_code, diagnostic, expires, "
    "note, first_seen, last_seen, count FROM temp.suppression_bulk WHERE rowid > ? "
    "ORDER BY rowid LIMIT ?"
)
_STAGE_DROP = "DROP TABLE IF EXISTS temp.suppression_bulk"
_DELETE = "DELETE FROM suppression WHERE domain = ? AND local = ?"
_HISTORY_COLUMNS = (
    "address, kind, action, at, actor, note, old_reason, new_reason, source, status, "
    "reply_code, diagnostic"
)
_INSERT_HISTORY = (
    f"INSERT INTO suppression_history (id, {_HISTORY_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    "reply_code, diagnostic FROM temp.suppression_bulk ORDER BY address, rowid"
)
_EXPIRED = "expires IS NOT NULL AND expires <= ?"
_COUNT_EXPIRED = f"SELECT count(*) FROM suppression WHERE {_EXPIRED}"
_PRUNE_HISTORY = (
    f"INSERT INTO suppression_history (id, {_HISTORY_COLUMNS}) "
    f"SELECT ? + row_number() OVER (ORDER BY domain, local), {_ADDRESS_EXPR}, {_KIND_EXPR}, "
    "'expired', ?, ?, ?, reason, reason, source, status, reply_code, diagnostic "
    f"FROM suppression WHERE {_EXPIRED}"
)
_PRUNE = f"DELETE FROM suppression WHERE {_EXPIRED}"


@contextmanager
def _explained(path: Path) -> Iterator[None]:
    """sqlite3 errors inside the block become one-line StoreErrors naming ``path``
    (a plain context manager: it serves ``await`` inside the async store too)."""
    try:
        yield
    except sqlite3.Error as e:
        raise explain(path, e) from None


def _with_ids(rows: list[_HistoryRow], last_id: int) -> list[tuple[Any, ...]]:
    """History rows with their ids, ending at ``last_id`` (from :data:`_NEXT_IDS`)."""
    first = last_id - len(rows) + 1
    return [(first + i, *row) for i, row in enumerate(rows)]


def _entry(row: Iterable[Any]) -> SuppressionEntry:
    return SuppressionEntry(*row)


def _key(address: str, kind: str) -> tuple[str, str]:
    """(domain, local) of a normalised address or domain: the table's key."""
    if kind == "domain":
        return address, ""
    local, _, domain = address.rpartition("@")
    return domain, local


def _upsert_row(e: SuppressionEntry) -> tuple[Any, ...]:
    return (
        *_key(e.address, e.kind),
        e.reason,
        e.status,
        e.reply_code,
        e.diagnostic,
        e.source,
        e.first_seen,
        e.last_seen,
        e.count,
        e.expires,
    )


def _target_key(address: str) -> tuple[str, str]:
    """(domain, local) of an address or domain as a caller typed it."""
    kind, key = normalize_target(address)
    return _key(key, kind)


def _plan(
    existing: dict[str, SuppressionEntry], batch: list[Observation], actor: str, now: float
) -> tuple[list[tuple[Any, ...]], list[_HistoryRow], list[tuple[SuppressionEntry, str]]]:
    """Apply :func:`_merge` to a batch: rows to upsert, history rows, (entry, action)s.

    ``existing`` holds the stored entries for the batch's keys; it is updated as
    the batch goes, so an address twice in one batch merges with itself.
    """
    results: list[tuple[SuppressionEntry, str]] = []
    history: list[_HistoryRow] = []
    final: dict[str, SuppressionEntry] = {}
    for obs in batch:
        new, rows, action = _merge(existing.get(obs.address), obs, actor, now)
        existing[obs.address] = final[obs.address] = new
        history.extend(rows)
        results.append((new, action))
    return [_upsert_row(e) for e in final.values()], history, results


@dataclass(frozen=True)
class ListFilter:
    """What ``list`` shows: all filters optional, combined with AND."""

    reason: str | None = None
    domain: str | None = None
    source: str | None = None
    since: float | None = None  # first_seen at or after
    kind: str | None = None
    include_expired: bool = False


def _list_query(
    f: ListFilter, after: str | None, limit: int | None, now: float
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if after is not None:
        where.append("(domain, local) > (?, ?)")
        params.extend(_target_key(after))
    for column, value in (("reason", f.reason), ("domain", f.domain), ("source", f.source)):
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


# --------------------------------------------------------------------------- sync store


class SuppressionStore:
    """The suppression list over a synchronous sqlite3 connection (CLI, milter, tools).

    Every method is one transaction (``BEGIN IMMEDIATE``, so the write lock is
    taken up front and another process waits up to the busy timeout instead of
    failing half-way); sqlite3 errors become one-line :class:`StoreError`.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        row = conn.execute("PRAGMA database_list").fetchone()
        self._path = Path(row[2]) if row and row[2] else Path(":memory:")

    @classmethod
    def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0, create: bool = True
    ) -> SuppressionStore:
        """Open (creating and migrating if needed) the store under ``data_dir``."""
        return cls(connect(data_dir, busy_timeout=busy_timeout, create=create))

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
        return _explained(self._path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _write(
        self, batch: list[Observation], actor: str, now: float
    ) -> list[tuple[SuppressionEntry, str]]:
        """Merge a batch inside the caller's transaction."""
        conn = self._conn
        if len(batch) == 1:
            rows = conn.execute(_GET, _key(batch[0].address, batch[0].kind)).fetchall()
        else:
            keys = json.dumps(list({_key(o.address, o.kind) for o in batch}))
            rows = conn.execute(_GET_MANY, (keys,)).fetchall()
        upserts, history, results = _plan({r[0]: _entry(r) for r in rows}, batch, actor, now)
        upserts.sort()  # key order: each B-tree page is visited once per batch
        conn.executemany(_UPSERT, upserts)
        self._insert_history(history)
        return results

    def _insert_history(self, rows: list[_HistoryRow]) -> None:
        if rows:
            last_id = self._conn.execute(_NEXT_IDS, (len(rows),)).fetchall()[0][0]
            self._conn.executemany(_INSERT_HISTORY, _with_ids(rows, last_id))

    # -- the narrow interface

    def lookup(self, address: str, *, now: float | None = None) -> SuppressionEntry | None:
        """The entry suppressing ``address``: its own entry, else its domain's.

        Expired entries are ignored (as if already pruned). ``address`` may
        also be a domain (``example.com``) to look up a whole-domain entry.
        """
        domain, local = _target_key(address)
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
        source: str,
        actor: str,
        status: str = "",
        reply_code: str = "",
        diagnostic: str = "",
        expires: float | None = None,
        note: str = "",
        kind: str = "address",
    ) -> SuppressionEntry:
        """Add ``address`` or, if present, merge the sighting (see module doc).

        ``kind="domain"`` records a whole domain (``address`` is then the domain).
        Raises :class:`~smtpguard.errors.AddressError` for an invalid address,
        :class:`~smtpguard.errors.UserError` for an unknown reason or source or a
        malformed status / reply code, :class:`~smtpguard.errors.StoreError` when
        the database fails (locked past the busy timeout, corrupt, read-only);
        nothing is written in any of these cases.
        """
        obs = make_observation(
            address,
            reason,
            source=source,
            kind=kind,
            status=status,
            reply_code=reply_code,
            diagnostic=diagnostic,
            expires=expires,
            note=note,
        )
        return self.record_observation(obs, actor=actor)

    def record_observation(
        self, obs: Observation, *, actor: str, now: float | None = None
    ) -> SuppressionEntry:
        with self._transaction():
            return self._write([obs], actor, time.time() if now is None else now)[0][0]

    def remove(self, address: str, *, actor: str, note: str = "") -> bool:
        """Take ``address`` (or a domain) off the list; False if it was not on it."""
        key = _target_key(address)
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(_GET, key).fetchone()
            if row is None:
                return False
            old = _entry(row)
            conn.execute(_DELETE, key)
            self._insert_history([_history_row(old, "removed", now, actor, note, old.reason)])
        return True

    def history(self, address: str) -> list[HistoryRecord]:
        """Every change to ``address`` (or a domain's entry), oldest first."""
        _, key = normalize_target(address)
        with self._errors():
            return [HistoryRecord(*r) for r in self._conn.execute(_HISTORY, (key,))]

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
                writer = BulkWriter(self, actor, batch_size)
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
            by_reason = dict(
                c.execute(
                    f"SELECT reason, count(*) FROM suppression WHERE {live} "
                    "GROUP BY reason ORDER BY 2 DESC, 1",
                    (now,),
                ).fetchall()
            )
            by_source = dict(
                c.execute(
                    f"SELECT source, count(*) FROM suppression WHERE {live} "
                    "GROUP BY source ORDER BY 2 DESC, 1",
                    (now,),
                ).fetchall()
            )
            recent = {
                label: c.execute(
                    f"SELECT count(*) FROM suppression WHERE first_seen >= ? AND {live}",
                    (now - seconds, now),
                ).fetchone()[0]
                for label, seconds in (("24h", 86400), ("7d", 7 * 86400))
            }
            history = c.execute(_HISTORY_SEQ).fetchone()[0]
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
            "by_reason": by_reason,
            "by_source": by_source,
        }


class BulkWriter:
    """Collects sightings inside :meth:`SuppressionStore.bulk` and writes them at the end.

    Rows are staged in a temporary table as they come (bounded memory), then
    moved in key order in one statement per table. That is only right when
    every address is new (the usual import into a fresh list); if any is
    already listed or repeats, the staged rows are instead merged batch by
    batch with :func:`_merge`, exactly as :meth:`SuppressionStore.record` would.
    """

    def __init__(self, store: SuppressionStore, actor: str, batch_size: int) -> None:
        self._store = store
        self._actor = actor
        self._batch_size = batch_size
        self._buffer: list[tuple[Any, ...]] = []
        self._staged = 0
        self.counts: dict[str, int] = {"added": 0, "escalated": 0, "updated": 0}
        with store._errors():
            store._conn.execute(_STAGE_DROP)
            store._conn.execute(_STAGE_CREATE)

    def add(self, obs: Observation) -> None:
        now = time.time()
        first = obs.first_seen if obs.first_seen is not None else now
        last = obs.last_seen if obs.last_seen is not None else max(now, first)
        domain, local = _key(obs.address, obs.kind)
        self._buffer.append(
            (
                domain,
                local,
                obs.address,
                obs.kind,
                obs.reason,
                obs.status,
                obs.reply_code,
                obs.diagnostic,
                obs.source,
                first,
                last,
                obs.count,
                obs.expires,
                obs.note,
                now,
            )
        )
        if len(self._buffer) >= self._batch_size:
            self._stage()

    def _stage(self) -> None:
        if self._buffer:
            with self._store._errors():
                self._store._conn.executemany(_STAGE_INSERT, self._buffer)
            self._staged += len(self._buffer)
            self._buffer = []

    def _finish(self) -> None:
        """Move the staged rows into the list (inside the caller's transaction)."""
        self._stage()
        conn = self._store._conn
        with self._store._errors():
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
                    conn.execute("RELEASE suppression_bulk_sorted")
                    self.counts["added"] += self._staged
            conn.execute(_STAGE_DROP)

    def _merge_staged(self) -> None:
        """Slow path: merge the staged rows, in file order, batch by batch."""
        conn = self._store._conn
        after = 0
        while True:
            rows = conn.execute(_STAGE_READ, (after, self._batch_size)).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            batch = [Observation(*row[1:]) for row in rows]
            for _, action in self._store._write(batch, self._actor, time.time()):
                self.counts[action] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- async store


class AsyncSuppressionStore:
    """The same list for the relay's event loop, over aiosqlite (same semantics).

    aiosqlite runs SQLite in its own thread, so a disk wait never blocks the
    loop. One connection serves the store: an :class:`asyncio.Lock` keeps two
    coroutines' transactions from interleaving on it.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0
    ) -> AsyncSuppressionStore:
        conn = await connect_async(data_dir, busy_timeout=busy_timeout)
        return cls(conn, db_path(data_dir))

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> AsyncSuppressionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            with _explained(self._path):
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    await self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        await self._conn.execute("ROLLBACK")
                    raise

    async def _insert_history(self, rows: list[_HistoryRow]) -> None:
        if rows:
            async with self._conn.execute(_NEXT_IDS, (len(rows),)) as cur:
                last_id = (await cur.fetchall())[0][0]
            await self._conn.executemany(_INSERT_HISTORY, _with_ids(rows, last_id))

    async def _fetchone(self, sql: str, params: tuple[Any, ...]) -> Any:
        async with self._conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def lookup(self, address: str, *, now: float | None = None) -> SuppressionEntry | None:
        """See :meth:`SuppressionStore.lookup`."""
        domain, local = _target_key(address)
        with _explained(self._path):
            row = await self._fetchone(
                _LOOKUP, (domain, local, time.time() if now is None else now)
            )
        return None if row is None else _entry(row)

    async def record(
        self,
        address: str,
        reason: str,
        *,
        source: str,
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
            address,
            reason,
            source=source,
            kind=kind,
            status=status,
            reply_code=reply_code,
            diagnostic=diagnostic,
            expires=expires,
            note=note,
        )
        async with self._transaction() as conn:
            row = await self._fetchone(_GET, _key(obs.address, obs.kind))
            existing = {} if row is None else {obs.address: _entry(row)}
            upserts, history, results = _plan(existing, [obs], actor, time.time())
            await conn.executemany(_UPSERT, upserts)
            await self._insert_history(history)
        return results[0][0]

    async def remove(self, address: str, *, actor: str, note: str = "") -> bool:
        """See :meth:`SuppressionStore.remove`."""
        key = _target_key(address)
        async with self._transaction() as conn:
            row = await self._fetchone(_GET, key)
            if row is not None:
                old = _entry(row)
                await conn.execute(_DELETE, key)
                await self._insert_history(
                    [_history_row(old, "removed", time.time(), actor, note, old.reason)]
                )
        return row is not None

    async def history(self, address: str) -> list[HistoryRecord]:
        """See :meth:`SuppressionStore.history`."""
        _, key = normalize_target(address)
        with _explained(self._path):
            async with self._conn.execute(_HISTORY, (key,)) as cur:
                return [HistoryRecord(*r) async for r in cur]
