"""``logscan --apply``: hand what the logs say to the suppression policy (evidence ``log``).

Nothing here decides anything: every verdict goes to the platform's
:class:`~smtpguard.policy.sink.VerdictSink` with ``Evidence(kind="log",
actor="logscan")``, and the sink's evidence rules, storm breaker and merge
rule decide what reaches the list (a reply at MAIL FROM, one naming another
address, one after DATA that names nobody: nothing). Deliveries go too: the
storm breaker judges a destination by the share of its attempts that would
suppress, and a delivery refutes a pending entry.

Verdicts are applied in batches, each at the time the log says it happened
(``now``), never going backwards: a week of log is a week to the storm
breaker, not ten minutes. Give rotated files oldest first
(``mail.log.2.gz mail.log.1 mail.log``): a file older than one already read
counts as "now".
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

from smtpguard.classify import Verdict
from smtpguard.config import Config
from smtpguard.ops.logformats import timestamp
from smtpguard.policy import Evidence, open_sink

if TYPE_CHECKING:
    from smtpguard.ops.logscan import Scanned
    from smtpguard.policy.sink import SuppressionSink

#: Verdicts per transaction, and the longest stretch of log time one batch spans.
BATCH = 500
BATCH_SECONDS = 60.0


class LogApplier:
    """Collects verdicts and applies them through the sink; ``close()`` flushes."""

    def __init__(self, cfg: Config) -> None:
        self._runner = asyncio.Runner()
        self._sink: SuppressionSink = self._runner.run(open_sink(cfg))
        self._batch: list[Verdict] = []
        self._file = ""
        self._start = self._now = 0.0
        self.outcomes: collections.Counter[str] = collections.Counter()

    def add(self, item: Scanned) -> None:
        name = item.source.rpartition(":")[0]
        logged = timestamp(item.event.time) or time.time()
        when = max(logged, self._now)  # the storm breaker's clock never goes back
        if self._batch and (
            name != self._file or len(self._batch) >= BATCH or when - self._start > BATCH_SECONDS
        ):
            self.flush()
        if not self._batch:
            self._file, self._start = name, when
        self._now = when
        self._batch.append(item.verdict)

    def flush(self) -> None:
        if not self._batch:
            return
        evidence = Evidence(kind="log", actor="logscan", note=f"logscan {self._file}"[:200])
        report = self._runner.run(self._sink.accept(self._batch, evidence, now=self._now))
        for verdict, applied in zip(self._batch, report.applied, strict=True):
            if verdict.reason != "delivered" or applied.outcome != "ignored":
                self.outcomes[applied.outcome] += 1  # a delivery counts only when it refutes
        self._batch = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._runner.run(self._sink.close())
            self._runner.close()
