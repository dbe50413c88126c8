"""Per-day delivery counts: the history ``smtpguard report`` draws, small and bounded.

The queue forgets finished messages after ``delivery.keep_finished`` (a week);
an admin's Monday-morning questions (which domains bounce more this week than
last, why) need longer, but not every message. So the relay adds its counts
here in batches (:mod:`smtpguard.relay.daily`): one row per UTC day and
destination domain (``daily_deliveries``), one per day, status and reason
(``daily_reasons``). Bounded twice: at most ``max_domains`` domains a day get
a row of their own (later ones add to ``(other)``), and days older than
``report.keep`` are pruned by the relay's housekeeping. With the defaults
(500 domains, 90 days) that is at most 45,000 small rows.

Schema: migration step 4 in :mod:`smtpguard.store.migrations`.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from smtpguard.store import outbox

#: The domain the counts of domains past the day's cap go to.
OTHER = "(other)"
#: The counted statuses, in column order.
COLUMNS = ("sent", "deferred", "bounced", "expired", "suppressed")

DayDomain = tuple[str, str]
DayReason = tuple[str, str, str]  # day, status, reason


def day_of(ts: float) -> str:
    """The UTC day of a unix time: ``"2026-03-02"``."""
    return _day(int(ts // 86_400))


@functools.lru_cache(maxsize=64)
def _day(number: int) -> str:
    # Cached: the relay asks for the same day for every attempt it counts.
    return datetime.fromtimestamp(number * 86_400, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class DayCounts:
    """One row of ``daily_deliveries``."""

    day: str
    domain: str
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    suppressed: int = 0


_ADD = (
    "INSERT INTO daily_deliveries (day, domain, sent, deferred, bounced, expired, suppressed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, domain) DO UPDATE SET"
    " sent = sent + excluded.sent, deferred = deferred + excluded.deferred,"
    " bounced = bounced + excluded.bounced, expired = expired + excluded.expired,"
    " suppressed = suppressed + excluded.suppressed"
)
_ADD_REASON = (
    "INSERT INTO daily_reasons (day, status, reason, count) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (day, status, reason) DO UPDATE SET count = count + excluded.count"
)
#: Reasons kept per day and status; the classifier's vocabulary is about 35 words,
#: operator rules may add some, a broken rule file must not add thousands.
MAX_REASONS_PER_DAY = 200


class _DayCap:
    """Whether a key may have a row of its own in ``table`` on a day: it has one already,
    or the day has fewer than ``cap`` rows (counted once per batch, then tracked)."""

    def __init__(self, conn: sqlite3.Connection, table: str, keys: tuple[str, ...], cap: int):
        self._conn = conn
        self._table = table
        self._where = " AND ".join(f"{k} = ?" for k in ("day", *keys))
        self._cap = cap
        self._rows: dict[str, int] = {}

    def admits(self, day: str, *key: str) -> bool:
        sql = f"SELECT 1 FROM {self._table} WHERE {self._where}"
        if self._conn.execute(sql, (day, *key)).fetchone() is not None:
            return True
        n = self._rows.get(day)
        if n is None:
            sql = f"SELECT count(*) FROM {self._table} WHERE day = ?"
            n = self._conn.execute(sql, (day,)).fetchone()[0]
        if n >= self._cap:
            return False
        self._rows[day] = n + 1
        return True


def add(
    conn: sqlite3.Connection,
    deliveries: Mapping[DayDomain, Iterable[int]],
    reasons: Mapping[DayReason, int],
    max_domains: int,
) -> None:
    """Add a batch of counts (in the caller's transaction), keeping each day's caps.

    A domain the day has no row for yet gets one only while the day has fewer
    than ``max_domains`` rows; otherwise its counts go to :data:`OTHER` (which
    is always allowed, so the cap costs at most one row more). Reasons alike.
    """
    domains = _DayCap(conn, "daily_deliveries", ("domain",), max_domains)
    added: list[list[object]] = []
    for (day, domain), counts in deliveries.items():
        target = domain if domains.admits(day, domain) else OTHER
        conn.execute(_ADD, (day, target, *counts))
        added.append([day, target, *counts])
    kept = _DayCap(conn, "daily_reasons", ("status", "reason"), MAX_REASONS_PER_DAY)
    added_reasons: list[list[object]] = []
    for (day, status, reason), n in reasons.items():
        target = reason if kept.admits(day, status, reason) else OTHER
        conn.execute(_ADD_REASON, (day, status, target, n))
        added_reasons.append([day, status, target, n])
    # A fleet node's counts also go to PostgreSQL, where `report` adds up every node's.
    outbox.note(conn, "daily", ("", ""), {"deliveries": added, "reasons": added_reasons})


def prune(conn: sqlite3.Connection, before_day: str) -> int:
    """Delete the days before ``before_day`` (``"YYYY-MM-DD"``); returns the rows deleted."""
    n = conn.execute("DELETE FROM daily_deliveries WHERE day < ?", (before_day,)).rowcount
    n += conn.execute("DELETE FROM daily_reasons WHERE day < ?", (before_day,)).rowcount
    return n


def deliveries(conn: sqlite3.Connection, since_day: str) -> list[DayCounts]:
    """Every row from ``since_day`` on, by day then domain."""
    rows = conn.execute(
        "SELECT day, domain, sent, deferred, bounced, expired, suppressed FROM daily_deliveries"
        " WHERE day >= ? ORDER BY day, domain",
        (since_day,),
    )
    return [DayCounts(*r) for r in rows]


def reasons(conn: sqlite3.Connection, since_day: str) -> list[tuple[str, str, str, int]]:
    """``(day, status, reason, count)`` from ``since_day`` on."""
    return [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT day, status, reason, count FROM daily_reasons WHERE day >= ?"
            " ORDER BY day, status, reason",
            (since_day,),
        )
    ]
