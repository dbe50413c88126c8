"""The offline feed: stored bounces through the listener's pipeline (``smtpguard intake``).

Each message of the sources (:mod:`smtpguard.intake.sources`) is classified and weighed
exactly as the listener does (:func:`smtpguard.intake.returned.judge`; the return path
is read from ``Delivered-To`` / ``X-Original-To`` / ``To`` since stored mail has no
envelope), checked against what was sent (the queue and the milter's messages), and
handed to the policy's sink - or, with ``dry_run``, only shown to the sink
(:meth:`SuppressionSink.prepare`) so that what it *would* do is printed and nothing is
written.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from smtpguard.intake.returned import Batch, SentRecords, judge
from smtpguard.intake.sources import messages

if TYPE_CHECKING:
    from smtpguard.classify import Classifier
    from smtpguard.intake.verp import VerpCodec
    from smtpguard.policy.sink import SuppressionSink

#: What each planned step of the sink would do, in words (dry run).
WOULD = {
    "enforce": "would suppress",
    "pending": "would hold pending (storm)",
    "record": "would record only",
    "dns": "would note a DNS sighting",
    "ignore": "would ignore",
    "delivered": "delivered",
}


async def feed(
    sources: Sequence[str],
    *,
    sink: SuppressionSink,
    classifier: Classifier,
    codec: VerpCodec | None,
    sent: SentRecords | None,
    dry_run: bool,
    emit: Callable[[str], None],
    actor: str = "intake:feed",
) -> collections.Counter[str]:
    """Feed every message of ``sources``; one line per verdict to ``emit``; the counts."""
    counts: collections.Counter[str] = collections.Counter()
    for source in sources:
        for name, data in messages(source):
            counts["messages"] += 1
            judgement = judge(data, [], codec=codec, classifier=classifier, actor=actor, sent=sent)
            if not judgement.is_bounce:
                counts["not a bounce"] += 1
                emit(f"{name}: not a bounce")
                continue
            for batch in judgement.batches:
                for line, outcome in await _apply(sink, batch, dry_run):
                    counts[outcome] += 1
                    emit(f"{name}: {line}")
            for v in judgement.ignored:
                counts["ignored"] += 1
                emit(f"{name}: {v.recipient}: ignored ({v.reason}: changes nothing)")
    return counts


async def _apply(sink: SuppressionSink, batch: Batch, dry_run: bool) -> list[tuple[str, str]]:
    kind = batch.evidence.kind
    detail = f" - {batch.evidence.note}" if kind.endswith("-unverified") else ""
    if dry_run:
        plan = sink.prepare(batch.verdicts, batch.evidence)
        return [
            (f"{s.address}: {WOULD[s.op]} ({kind}: {s.why}{detail})", WOULD[s.op])
            for s in plan.steps
        ]
    report = await sink.accept(batch.verdicts, batch.evidence)
    return [
        (f"{a.address}: {a.outcome} ({kind}: {a.why}{detail})", a.outcome) for a in report.applied
    ]
