"""``smtpguard report``: what an admin wants to know on Monday morning, as data.

:func:`build` reads the database (read-only) and returns a :class:`Report`;
rendering is elsewhere (terminal tables and JSON in :mod:`smtpguard.cli.report`,
the self-contained HTML page in :mod:`smtpguard.ops.reporthtml`), so every
form shows the same numbers. Sources:

* deliveries per UTC day and destination domain: the relay's per-day counts
  (:mod:`smtpguard.store.daily`; written in batches, kept ``report.keep``);
* complaints and suppression-list changes: the suppression history, which
  every process writes (:mod:`smtpguard.store.reporting`);
* the queue now: its indexes (what waits, for which domain, why) and the storm
  breaker's pending entries.

Rates: the **bounce rate** is bounced / (sent + bounced + expired), the share
of recipients whose delivery ended in a failure; the **complaint rate** is
complaints / sent. A day without final outcomes has no rate (None), not 0.
"""

from __future__ import annotations

import calendar
import math
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from smtpguard.store import daily, reporting

if TYPE_CHECKING:
    from smtpguard.store.pg.report import FleetReportSource
from smtpguard.store.db import iso
from smtpguard.store.messages import QueueDepth
from smtpguard.store.queue import depth

#: Counted columns of a :class:`Counts`, in display order.
FIELDS = ("sent", "deferred", "bounced", "expired", "suppressed", "complaints")


@dataclass(slots=True)
class Counts:
    """Per-recipient outcomes (and complaints) over some span."""

    sent: int = 0
    deferred: int = 0  # attempts deferred (one recipient may be deferred many times)
    bounced: int = 0
    expired: int = 0
    suppressed: int = 0  # refused at RCPT: on the suppression list
    complaints: int = 0

    def add(self, other: Counts) -> None:
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def finished(self) -> int:
        return self.sent + self.bounced + self.expired

    @property
    def bounce_rate(self) -> float | None:
        return self.bounced / self.finished if self.finished else None

    @property
    def complaint_rate(self) -> float | None:
        return self.complaints / self.sent if self.sent else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bounce_rate": self.bounce_rate,
                "complaint_rate": self.complaint_rate}  # fmt: skip


@dataclass(slots=True)
class DomainRow:
    """One destination domain over the report's days."""

    domain: str
    total: Counts
    by_day: list[Counts]  # one per report day, in order


@dataclass(frozen=True, slots=True)
class ReasonRow:
    status: str  # deferred, bounced, expired
    reason: str
    count: int


@dataclass(slots=True)
class SuppressionDay:
    """What changed on the suppression list on one day."""

    day: str
    added: int = 0  # new entries (and escalations: a stronger reason)
    removed: int = 0  # by an operator
    expired: int = 0
    pending: int = 0  # held back by the storm breaker
    recorded: int = 0  # seen, not enforced (mode record, unverified DSNs)


@dataclass(slots=True)
class Report:
    generated_at: float
    days: list[str]  # UTC days, oldest first
    by_day: list[Counts]
    total: Counts
    domains: list[DomainRow]  # busiest first, at most ``top``
    other_domains: int  # domains not listed
    reasons: list[ReasonRow]
    suppressions: list[SuppressionDay]
    added_by_evidence: dict[str, int]
    queue: QueueDepth
    waiting: list[reporting.Waiting]
    storms: list[reporting.Storm]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; times as ISO 8601 UTC."""
        return {
            "generated_at": iso(self.generated_at),
            "days": self.days,
            "by_day": [
                {"day": d, **c.to_dict()} for d, c in zip(self.days, self.by_day, strict=True)
            ],
            "total": self.total.to_dict(),
            "domains": [
                {
                    "domain": r.domain,
                    **r.total.to_dict(),
                    "by_day": [
                        {"day": d, **c.to_dict()} for d, c in zip(self.days, r.by_day, strict=True)
                    ],
                }
                for r in self.domains
            ],
            "other_domains": self.other_domains,
            "reasons": [asdict(r) for r in self.reasons],
            "suppressions": [asdict(s) for s in self.suppressions],
            "suppressions_added_by_evidence": self.added_by_evidence,
            "queue": {
                "messages": self.queue.messages,
                "recipients": self.queue.recipients,
                "oldest": iso(self.queue.oldest),
                "oldest_age_seconds": self.oldest_age,
            },
            "waiting": [
                {
                    **asdict(w),
                    "next_attempt": iso(w.next_attempt),
                    "last_attempt": iso(w.last_attempt),
                }
                for w in self.waiting
            ],
            "storms": [{**asdict(s), "since": iso(s.since)} for s in self.storms],
            "notes": self.notes,
        }

    @property
    def oldest_age(self) -> float | None:
        if self.queue.oldest is None:
            return None
        return max(self.generated_at - self.queue.oldest, 0.0)


def report_days(since: float, now: float) -> list[str]:
    """Today and the days before it that ``since`` seconds reach into (UTC): 7d -> 7 days."""
    n = max(math.ceil(since / 86_400), 1)
    return [daily.day_of(now - k * 86_400) for k in range(n - 1, -1, -1)]


def _day_start(day: str) -> float:
    return float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))


#: History actions counted as "added" (a stronger reason replacing a weaker one too).
_ADDED = ("added", "escalated", "confirmed")


def build(
    conn: sqlite3.Connection,
    *,
    since: float,
    top: int = 15,
    now: float | None = None,
    fleet: FleetReportSource | None = None,
) -> Report:
    """The report over the last ``since`` seconds (whole UTC days, today included).

    ``fleet``: on a fleet node, the per-day counts, reasons and suppression changes
    are the whole fleet's (from PostgreSQL); the queue is this node's either way.
    """
    now = time.time() if now is None else now
    days = report_days(since, now)
    index = {d: i for i, d in enumerate(days)}
    by_day = [Counts() for _ in days]
    domains: dict[str, list[Counts]] = {}

    def cell(domain: str, day: str) -> Counts:
        row = domains.get(domain)
        if row is None:
            row = domains[domain] = [Counts() for _ in days]
        return row[index[day]]

    for r in fleet.deliveries(days[0]) if fleet else daily.deliveries(conn, days[0]):
        if r.day not in index:
            continue  # a clock set back: a row "from the future"
        c = Counts(r.sent, r.deferred, r.bounced, r.expired, r.suppressed)
        cell(r.domain, r.day).add(c)
        by_day[index[r.day]].add(c)
    start = _day_start(days[0])
    if fleet is not None:
        changes, complaints = fleet.suppression_changes(start)
    else:
        changes, complaints = reporting.suppression_changes(conn, start)
    for day, domain, n in complaints:
        if day in index:
            cell(domain, day).complaints += n
            by_day[index[day]].complaints += n
    total = Counts()
    for c in by_day:
        total.add(c)
    rows = []
    for domain, cells in domains.items():
        t = Counts()
        for c in cells:
            t.add(c)
        rows.append(DomainRow(domain, t, cells))
    rows.sort(key=lambda r: (-(r.total.finished + r.total.deferred + r.total.suppressed),
                             r.domain))  # fmt: skip
    reasons: dict[tuple[str, str], int] = {}
    for day, status, reason, n in fleet.reasons(days[0]) if fleet else daily.reasons(conn, days[0]):
        if day in index:
            reasons[(status, reason)] = reasons.get((status, reason), 0) + n
    reason_rows = sorted((ReasonRow(s, r, n) for (s, r), n in reasons.items()),
                         key=lambda x: (-x.count, x.status, x.reason))  # fmt: skip
    sup = {d: SuppressionDay(d) for d in days}
    added_by: dict[str, int] = {}
    for ch in changes:
        s = sup.get(ch.day)
        if s is None:
            continue
        if ch.action in _ADDED:
            s.added += ch.count
            added_by[ch.evidence or "unknown"] = (
                added_by.get(ch.evidence or "unknown", 0) + ch.count
            )
        elif ch.action in ("removed", "expired", "pending", "recorded"):
            setattr(s, ch.action, getattr(s, ch.action) + ch.count)
    notes = []
    if fleet is not None:
        nodes = fleet.nodes(days[0])
        notes.append(
            f"fleet-wide counts from PostgreSQL ({len(nodes)} nodes: {', '.join(nodes) or '-'});"
            " the queue is this node's"
        )
    if not any(c.finished or c.deferred or c.suppressed for c in by_day):
        notes.append(
            "no delivery counts in this period: the relay writes them (every 10 s and at stop)"
        )
    return Report(
        generated_at=now, days=days, by_day=by_day, total=total, domains=rows[:top],
        other_domains=max(len(rows) - top, 0), reasons=reason_rows[:top],
        suppressions=[sup[d] for d in days], added_by_evidence=dict(sorted(added_by.items())),
        queue=depth(conn), waiting=reporting.waiting_by_domain(conn, top),
        storms=reporting.storms(conn), notes=notes,
    )  # fmt: skip
