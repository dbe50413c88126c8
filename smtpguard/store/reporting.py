"""Read-only queries for ``smtpguard report`` over the queue and the suppression history.

The per-day delivery counts have their own module (:mod:`smtpguard.store.daily`);
these read what other parts keep for their own reasons:

* suppression changes per day come from ``suppression_history``, which every
  process writes (the relay, the milter, intake, the CLI): one scan of the rows
  since the report's start (the table is clustered on address, so a time range
  cannot seek; a scan of a million rows takes well under a second);
* complaints are the history rows whose new reason is ``complaint`` (what the
  sink records for an ARF report or a provider's complaint event);
* the queue's deferred recipients and the storm breaker's pending entries are
  read through their indexes (unfinished rows only).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: History actions that are a complaint arriving (not a later settling of one).
_COMPLAINT_ACTIONS = ("added", "escalated", "updated", "recorded", "pending")


@dataclass(frozen=True, slots=True)
class ChangeCount:
    """Suppression-history rows of one day, action and evidence kind."""

    day: str
    action: str
    evidence: str
    count: int


@dataclass(frozen=True, slots=True)
class Waiting:
    """Recipients of one destination domain waiting for a retry (or held)."""

    domain: str
    recipients: int
    held: int
    reason: str  # the most frequent last reason
    next_attempt: float | None
    last_attempt: float | None


@dataclass(frozen=True, slots=True)
class Storm:
    """A destination whose new suppressions the storm breaker holds back."""

    destination: str
    pending: int
    since: float


def suppression_changes(
    conn: sqlite3.Connection, since: float
) -> tuple[list[ChangeCount], list[tuple[str, str, int]]]:
    """History since ``since``: counts per (day, action, evidence), and complaints per
    ``(day, domain, count)``; one scan of the table."""
    marks = ",".join("?" * len(_COMPLAINT_ACTIONS))
    rows = conn.execute(
        "SELECT date(at, 'unixepoch'), action, evidence,"
        f" CASE WHEN new_reason = 'complaint' AND action IN ({marks})"
        " THEN substr(address, instr(address, '@') + 1) END, count(*)"
        " FROM suppression_history WHERE at >= ? GROUP BY 1, 2, 3, 4",
        (*_COMPLAINT_ACTIONS, since),
    ).fetchall()
    return fold_changes(rows)


def fold_changes(
    rows: Iterable[Sequence[Any]],
) -> tuple[list[ChangeCount], list[tuple[str, str, int]]]:
    """``(day, action, evidence, complaint domain or None, n)`` rows grouped by the
    database -> the changes per (day, action, evidence) and the complaints per
    (day, domain); shared by the SQLite and PostgreSQL reports."""
    merged: dict[tuple[str, str, str], int] = {}
    complaints: dict[tuple[str, str], int] = {}
    for day, action, evidence, complaint_domain, n in rows:
        key = (day, action, evidence)
        merged[key] = merged.get(key, 0) + n
        if complaint_domain is not None:
            ckey = (day, complaint_domain)
            complaints[ckey] = complaints.get(ckey, 0) + n
    changes = [ChangeCount(*key, n) for key, n in sorted(merged.items())]
    return changes, [(d, dom, n) for (d, dom), n in sorted(complaints.items())]


@dataclass(slots=True)
class _Tally:
    recipients: int = 0
    held: int = 0
    next_attempt: float | None = None
    last_attempt: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)


def waiting_by_domain(conn: sqlite3.Connection, limit: int) -> list[Waiting]:
    """Destination domains with recipients deferred at least once and waiting (or held),
    most recipients first; read through the ``(state, next_attempt)`` index."""
    tallies: dict[str, _Tally] = {}
    for domain, state, reason, n, nxt, last in conn.execute(
        "SELECT domain, state, last_reason, count(*), min(next_attempt), max(last_attempt)"
        " FROM queue_recipients WHERE state IN ('queued', 'held') AND attempts > 0"
        " GROUP BY domain, state, last_reason"
    ):
        t = tallies.setdefault(domain, _Tally())
        t.recipients += n
        if state == "held":
            t.held += n
        elif t.next_attempt is None or nxt < t.next_attempt:
            t.next_attempt = nxt
        if last is not None and (t.last_attempt is None or last > t.last_attempt):
            t.last_attempt = last
        t.reasons[reason] = t.reasons.get(reason, 0) + n
    out = [
        Waiting(
            domain,
            t.recipients,
            t.held,
            max(t.reasons.items(), key=lambda kv: kv[1])[0],
            t.next_attempt,
            t.last_attempt,
        )
        for domain, t in tallies.items()
    ]
    out.sort(key=lambda w: (-w.recipients, w.domain))
    return out[:limit]


def storms(conn: sqlite3.Connection) -> list[Storm]:
    """Destinations with pending (held back) suppressions, most first."""
    return [
        Storm(dest, n, since)
        for dest, n, since in conn.execute(
            "SELECT destination, count(*), min(first_seen) FROM suppression_pending"
            " GROUP BY destination ORDER BY count(*) DESC, destination"
        )
    ]
