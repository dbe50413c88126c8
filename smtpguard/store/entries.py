"""The suppression list's records: entries, pending entries, history, observations.

Shared by the store (which keeps them) and the policy (which decides what a
verdict does to them), so the merge rule in :mod:`smtpguard.policy.merge` and
the SQL in :mod:`smtpguard.store.suppression` speak the same records.
Times are unix epoch seconds (UTC); :func:`~smtpguard.store.db.iso` renders them.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from smtpguard.address import normalize_address, normalize_domain, normalize_target
from smtpguard.classify.verdict import REASONS
from smtpguard.errors import UserError
from smtpguard.policy.evidence import EVIDENCE_KINDS
from smtpguard.smtp.status import is_reply_code, is_status
from smtpguard.store.db import iso

#: Why an address may be suppressed: the classifier's vocabulary (Sisimai v5)
#: without the two that are not failures at all, plus ``complaint`` (an ARF
#: report, an ESP's spam report), ``unsubscribe`` (the recipient asked to get no
#: more mail: an unsubscribe link, an ESP's opt-out list) and ``manual`` (an
#: operator's decision).
SUPPRESSION_REASONS = frozenset(
    (REASONS - {"delivered", "vacation"}) | {"complaint", "unsubscribe", "manual"}
)
#: The channel the knowledge came through (coarser than the evidence kind).
SOURCES = ("smtp-reply", "dns", "dsn", "arf", "webhook", "log", "manual", "import")
#: The source each evidence kind is recorded under.
SOURCE_OF_EVIDENCE = {
    "rcpt-reply": "smtp-reply",
    "data-reply": "smtp-reply",
    "session-reply": "smtp-reply",
    "dns": "dns",
    "dsn-verified": "dsn",
    "dsn-unverified": "dsn",
    "arf": "arf",
    "arf-unverified": "arf",
    "webhook": "webhook",
    "log": "log",
    "manual": "manual",
    "import": "import",
}
#: The evidence kind assumed when a caller names only a source (older files and
#: callers): the least trusted kind of that channel.
EVIDENCE_OF_SOURCE = {
    "smtp-reply": "rcpt-reply",
    "dns": "dns",
    "dsn": "dsn-unverified",
    "arf": "arf",
    "webhook": "webhook",
    "log": "log",
    "manual": "manual",
    "import": "import",
}
#: History actions: changes to an entry, and what the sink did without one
#: (``recorded``: seen, not enforced; ``pending``: held back by the storm breaker).
ACTIONS = (
    "added", "escalated", "updated", "removed", "expired",
    "recorded", "pending", "confirmed", "discarded",
)  # fmt: skip
MAX_DIAGNOSTIC = 1000
_WHITESPACE = re.compile(r"\s+")


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
    evidence: str = ""  # one of EVIDENCE_KINDS

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
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """A suppression the storm breaker held back: recorded, not enforced.

    ``destination`` is the storm's key (the recipient domain, or a site key).
    """

    entry: SuppressionEntry
    destination: str
    actor: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.to_dict(), "destination": self.destination, "actor": self.actor}


# (address, kind, action, at, actor, note, old_reason, new_reason, source, status,
#  reply_code, diagnostic, evidence): HistoryRecord's fields, the table's column order.
HistoryRow = tuple[str, str, str, float, str, str, str, str, str, str, str, str, str]


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
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = iso(self.at)
        return d


def history_row(
    e: SuppressionEntry, action: str, at: float, actor: str, note: str, old_reason: str
) -> HistoryRow:
    """The history row saying ``action`` happened to entry ``e``."""
    return (
        e.address, e.kind, action, at, actor, note, old_reason, e.reason, e.source, e.status,
        e.reply_code, e.diagnostic, e.evidence,
    )  # fmt: skip


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
    evidence: str = ""

    def entry(self, now: float) -> SuppressionEntry:
        """The entry this sighting makes when nothing is listed yet."""
        first = self.first_seen if self.first_seen is not None else now
        last = self.last_seen if self.last_seen is not None else max(now, first)
        return SuppressionEntry(
            self.address, self.kind, self.reason, self.status, self.reply_code,
            self.diagnostic, self.source, first, last, self.count, self.expires, self.evidence,
        )  # fmt: skip


def observation_of(e: SuppressionEntry, note: str = "") -> Observation:
    """The sighting that re-creates ``e`` (confirming a pending entry)."""
    return Observation(
        e.address, e.kind, e.reason, e.source, e.status, e.reply_code, e.diagnostic, e.expires,
        note, e.first_seen, e.last_seen, e.count, e.evidence,
    )  # fmt: skip


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
    source: str = "",
    evidence: str = "",
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
    Give the ``evidence`` kind, the ``source``, or both; the missing one follows
    from the other (:data:`SOURCE_OF_EVIDENCE`, :data:`EVIDENCE_OF_SOURCE`).
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
    if source and source not in SOURCES:
        raise UserError(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    if evidence and evidence not in EVIDENCE_KINDS:
        raise UserError(f"unknown evidence {evidence!r} (known: {', '.join(EVIDENCE_KINDS)})")
    if not source and not evidence:
        raise UserError("an observation needs its evidence kind or source")
    evidence = evidence or EVIDENCE_OF_SOURCE[source]
    source = source or SOURCE_OF_EVIDENCE[evidence]
    status = status.strip()
    if status and not is_status(status):
        raise UserError(f"status must be an RFC 3463 code like 5.1.1, not {status!r}")
    reply_code = reply_code.strip()
    if reply_code and not is_reply_code(reply_code):
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
        evidence=evidence,
    )
