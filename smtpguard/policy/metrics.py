"""Prometheus metrics of the suppression policy (the sink, the storm breaker, the list's hits).

The hits are counted by whoever asks the recipient policy - the relay, the milter and
the policy service, each in its own process and on its own ``/metrics`` - under one
name, so a dashboard adds them up (the scrape's ``job`` tells them apart).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from smtpguard.metrics import BoundedLabels

SUPPRESSED = Counter(
    "smtpguard_suppressed_total", "Recipients put on the suppression list.", ["reason"]
)
VERDICTS = Counter(
    "smtpguard_sink_verdicts_total",
    "Verdicts the suppression sink handled, by evidence kind and outcome"
    " (suppressed, pending, recorded, ignored, discarded).",
    ["evidence", "outcome"],
)
STORMS = Gauge(
    "smtpguard_suppression_storms", "Destinations whose new suppressions are held back now."
)
STORM = Gauge(
    "smtpguard_suppression_storm",
    "1 while a destination is in a suppression storm (new suppressions pending).",
    ["destination"],
)
destination_label = BoundedLabels(1000)
SUPPRESSION_HITS = Counter(
    "smtpguard_suppression_hits_total",
    "Recipients refused at RCPT because they are suppressed, by the entry's evidence kind.",
    ["evidence"],
)
