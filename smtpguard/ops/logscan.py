"""``smtpguard logscan``: classify the bounced and deferred deliveries in mail logs.

Data flows one way: :mod:`logread` finds candidate lines, :mod:`logformats`
turns them into :class:`LogEvent` records, the classifier (the same rules as
the relay's inline replies) gives each a :class:`Verdict`, and
:class:`Summary` counts them by reason and by recipient domain. Nothing holds
the log: memory is bounded by the block size, the reason vocabulary and
:data:`MAX_DOMAINS`.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from smtpguard.classify import Classifier, Verdict
from smtpguard.ops.logformats import DELIVERY_NEEDLES, NEEDLES, LogEvent, parse_line
from smtpguard.ops.logread import Follower, Line, LineFilter, open_source, read_lines

#: Recipient domains counted one by one; the rest are summed as "(other)".
MAX_DOMAINS = 10_000
OTHER = "(other)"

_CODE = re.compile(r"([2-5]\d\d)[ -]")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?![\d.])")


@dataclass(frozen=True, slots=True)
class Scanned:
    """One classified log event and where it was found (``mail.log:1234``)."""

    source: str
    event: LogEvent
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "source": self.source,
            **self.event.to_dict(),
            "reason": v.reason,
            "bounce": v.bounce,
            "suppress": v.suppress,
            "rule": v.rule,
        }


@dataclass
class DomainCount:
    bounced: int = 0
    deferred: int = 0
    delivered: int = 0  # counted only when deliveries are read (--apply)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Summary:
    """Counts over everything scanned; bounded whatever the input."""

    files: int = 0
    lines: int = 0
    bytes: int = 0
    long_lines: int = 0  # cut at the maximum line length
    unparsed: int = 0  # lines that looked like failures but matched no format
    events: int = 0  # failures: bounced + deferred
    bounced: int = 0
    deferred: int = 0
    delivered: int = 0  # counted only when deliveries are read (--apply)
    suppressible: int = 0  # verdicts saying the address itself is bad
    seconds: float = 0.0
    by_mta: collections.Counter[str] = field(default_factory=collections.Counter)
    by_reason: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    by_domain: dict[str, DomainCount] = field(default_factory=dict)

    def add(self, item: Scanned) -> None:
        e, v = item.event, item.verdict
        if e.status == "delivered":
            self.delivered += 1
            self._domain(e.recipient).delivered += 1
            return
        self.events += 1
        self.by_mta[e.mta] += 1
        self.by_reason[(v.reason, v.bounce)] += 1
        if v.suppress:
            self.suppressible += 1
        counts = self._domain(e.recipient)
        counts.reasons[v.reason] += 1
        if e.status == "bounced":
            self.bounced += 1
            counts.bounced += 1
        else:
            self.deferred += 1
            counts.deferred += 1

    def _domain(self, recipient: str) -> DomainCount:
        domain = recipient.rpartition("@")[2].lower() or "(none)"
        if domain not in self.by_domain and len(self.by_domain) >= MAX_DOMAINS:
            domain = OTHER
        return self.by_domain.setdefault(domain, DomainCount())

    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def top_domains(self, n: int) -> list[tuple[str, DomainCount]]:
        def failures(kv: tuple[str, DomainCount]) -> tuple[int, int, str]:
            c = kv[1]
            return (-(c.bounced + c.deferred), -c.delivered, kv[0])

        return sorted(self.by_domain.items(), key=failures)[:n]

    def top_reasons(self) -> list[tuple[str, str, int]]:
        return sorted(
            ((r, b, n) for (r, b), n in self.by_reason.items()), key=lambda x: (-x[2], x[0])
        )

    def to_dict(self, top: int = 100) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "bytes": self.bytes,
            "long_lines": self.long_lines,
            "unparsed": self.unparsed,
            "events": self.events,
            "bounced": self.bounced,
            "deferred": self.deferred,
            "delivered": self.delivered,
            "suppressible": self.suppressible,
            "seconds": round(self.seconds, 3),
            "by_mta": dict(self.by_mta),
            "by_reason": [{"reason": r, "bounce": b, "count": n} for r, b, n in self.top_reasons()],
            "by_domain": [
                {
                    "domain": d,
                    "bounced": c.bounced,
                    "deferred": c.deferred,
                    "delivered": c.delivered,
                    "top_reason": c.reasons.most_common(1)[0][0] if c.reasons else "",
                }
                for d, c in self.top_domains(top)
            ],
        }


class Scanner:
    """Parse and classify candidate lines; keeps the :class:`Summary`.

    With ``deliveries`` it also reads successful deliveries (yielded with a
    ``delivered`` verdict, not classified), for the suppression policy's
    per-destination counts.
    """

    def __init__(self, classifier: Classifier, *, deliveries: bool = False) -> None:
        self.classifier = classifier
        self.deliveries = deliveries
        self.needles = NEEDLES + DELIVERY_NEEDLES if deliveries else NEEDLES
        self.summary = Summary()
        self._started = time.monotonic()

    def scan(self, name: str, lines: Iterable[Line]) -> Iterator[Scanned]:
        for line in lines:
            events = parse_line(line.data.decode("utf-8", "replace"), deliveries=self.deliveries)
            if events is None:
                self.summary.unparsed += 1
                continue
            for event in events:
                if event.status == "delivered":  # a fact of the log, nothing to classify
                    verdict = Verdict(
                        recipient=event.recipient, reason="delivered", bounce="none",
                        action="delivered", remote_host=event.relay, format="log",
                    )  # fmt: skip
                else:
                    verdict = self.classify(event)
                item = Scanned(f"{name}:{line.lineno}", event, verdict)
                self.summary.add(item)
                yield item

    def classify(self, event: LogEvent) -> Verdict:
        """The relay's classifier on the logged reply.

        When the reply carries no enhanced status, the MTA's ``dsn=`` stands in
        for it; when the MTA logged none either (Exim), the generic status of
        what the MTA did (RFC 3463 4.0.0 for a deferral, 5.0.0 for a bounce), so
        a deferral is never read as a permanent failure.
        """
        reply = event.reply
        m = _CODE.match(reply)
        code = m.group(1) if m else ""
        rest = reply[m.end() :] if m else reply
        if not _STATUS.match(rest.lstrip()):
            dsn = event.dsn or ("4.0.0" if event.status == "deferred" else "5.0.0")
            if not code or code[0] == dsn[0]:
                reply = f"{code} {dsn} {rest}" if code else f"{dsn} {rest}"
        return self.classifier.reply(
            code, reply, stage=event.stage, recipient=event.recipient, remote_host=event.relay
        )

    def scan_input(
        self, name: str, progress: Callable[[int], None] | None = None
    ) -> Iterator[Scanned]:
        """Scan one file or "-" to its end (``progress`` gets the file position)."""
        source = open_source(name)
        lines = LineFilter(self.needles)
        try:
            yield from self.scan(name, read_lines(source, lines, progress))
        finally:
            source.close()
            self._count(lines)

    def follow(
        self,
        names: list[str],
        *,
        poll: float = 0.25,
        from_end: bool = False,
        on_idle: Callable[[], None] | None = None,
    ) -> Iterator[Scanned]:
        """Scan the files, then keep following them across rotation until interrupted
        (KeyboardInterrupt, or the caller stops iterating); ``on_idle`` runs each time
        the files have nothing new (before waiting)."""
        followers = [Follower(n, self.needles, from_end=from_end) for n in names]
        try:
            while True:
                idle = True
                for f in followers:
                    found = f.poll()
                    if found:
                        idle = False
                        yield from self.scan(f.path, found)
                if idle:
                    if on_idle is not None:
                        on_idle()
                    time.sleep(poll)
        finally:
            for f in followers:
                f.close()
                self.summary.files += 1 + f.rotations
                self.summary.lines += f.lines
                self.summary.bytes += f.bytes
                self.summary.long_lines += f.long_lines

    def _count(self, lines: LineFilter) -> None:
        self.summary.files += 1
        self.summary.lines += lines.lines
        self.summary.bytes += lines.bytes
        self.summary.long_lines += lines.long_lines

    def done(self) -> Summary:
        self.summary.seconds = time.monotonic() - self._started
        return self.summary
