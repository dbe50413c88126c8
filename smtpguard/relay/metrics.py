"""Prometheus metrics of the relay engine (served when ``metrics.listen`` is set).

Counters are process-wide in prometheus_client's default registry; they cost
a lock and an add, so they are updated inline. ``smtpguard_rejections_total``
counts policy or reputation rejections per destination domain. What the
suppression list gains is counted by the policy (``policy/metrics.py``:
``smtpguard_sink_verdicts_total{evidence, outcome="suppressed"}`` are the
suppressions added per evidence kind); what it refuses at RCPT is
``smtpguard_suppression_hits_total{evidence}`` (also declared in ``policy/metrics.py``:
the milter and the policy service count their hits under the same name).

Per-destination labels are bounded (:data:`domain_label`: the first
:data:`MAX_DOMAIN_LABELS` domains, then ``other``). Per-site results and
throttle state belong to the traffic shaper, keyed by its site label the same
way (:class:`smtpguard.metrics.KeyedCounter`).

The queue gauges are recounted every ``metrics.queue_refresh`` seconds from the
queue's indexes (:meth:`QueueGauges.refresh`), never per scrape; the oldest
message's age is computed at scrape time from the last count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge

from smtpguard.metrics import BoundedLabels, KeyedCounter
from smtpguard.policy.metrics import SUPPRESSION_HITS
from smtpguard.relay.observe import AttemptRecord, DsnQueued, Received, Refused
from smtpguard.store.messages import QueueDepth

RECEIVED = Counter("smtpguard_messages_received_total", "Messages committed to the queue.")
DELIVERIES = Counter(
    "smtpguard_deliveries_total",
    "Per-recipient attempt results (delivered, deferred, bounced, expired).",
    ["result"],
)
REJECTIONS = Counter(
    "smtpguard_rejections_total",
    "Hard rejections that did not suppress the recipient (policy, reputation...).",
    ["domain", "reason"],
)
DSNS = Counter("smtpguard_dsns_total", "DSNs generated and queued.")
CONNECTIONS = Counter(
    "smtpguard_delivery_connections_total", "Outbound connections by result.", ["result"]
)
INFLIGHT = Gauge("smtpguard_inflight_messages", "Messages claimed for delivery right now.")

#: Distinct destination domains given their own label; later ones count as "other".
MAX_DOMAIN_LABELS = 1000
domain_label = BoundedLabels(MAX_DOMAIN_LABELS)

INBOUND_SESSIONS = Gauge("smtpguard_inbound_sessions", "Inbound SMTP sessions open right now.")
REFUSALS = Counter(
    "smtpguard_inbound_refusals_total",
    "Inbound sessions, recipients or messages refused, by reason.",
    ["reason"],
)
# Bound once: a labelled child costs a dict lookup per use otherwise.
REFUSED = {
    reason: REFUSALS.labels(reason)
    for reason in (
        "relay_denied", "suppressed", "too_many_recipients", "lookup_failed", "bounce_domain",
        "rate_limited", "policy", "storage_failed", "too_many_sessions", "idle_timeout",
        "session_deadline", "slow_data", "too_many_from_client", "idle_closed_for_room",
        "junk_commands", "data_in_flight",
    )
}  # fmt: skip

# --------------------------------------------------------------------------- per destination

#: The delivery log's status -> the result label of smtpguard_deliveries_total.
RESULT = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced", "expired": "expired"}
DOMAIN_RESULTS = KeyedCounter(
    "smtpguard_domain_deliveries_total",
    "Per-recipient attempt results per destination domain (bounded: later domains are other).",
    "domain",
    ["result"],
    keys=domain_label,
)

# --------------------------------------------------------------------------- the delivery log

LOG_DROPPED = Counter(
    "smtpguard_delivery_log_dropped_total",
    "Delivery-log lines dropped because the destination could not keep up.",
)
LOG_ERRORS = Counter(
    "smtpguard_delivery_log_errors_total", "Delivery-log lines the destination refused."
)

# --------------------------------------------------------------------------- the queue

QUEUE_MESSAGES = Gauge("smtpguard_queue_messages", "Messages in the queue with work left.")
QUEUE_RECIPIENTS = Gauge(
    "smtpguard_queue_recipients", "Recipients with work left, by state.", ["state"]
)
QUEUE_OLDEST = Gauge(
    "smtpguard_queue_oldest_age_seconds",
    "Age of the oldest message with work left (0 when the queue is empty).",
)
QUEUE_COUNTED = Gauge(
    "smtpguard_queue_counted_timestamp_seconds", "When the queue gauges were last recounted."
)


class QueueGauges:
    """The queue gauges, set from one :class:`~smtpguard.store.messages.QueueDepth`."""

    def __init__(self) -> None:
        self._oldest: float | None = None
        QUEUE_OLDEST.set_function(self._age)

    def _age(self) -> float:
        return max(time.time() - self._oldest, 0.0) if self._oldest is not None else 0.0

    def refresh(self, depth: QueueDepth) -> None:
        QUEUE_MESSAGES.set(depth.messages)
        for state, n in depth.recipients.items():
            QUEUE_RECIPIENTS.labels(state).set(n)
        self._oldest = depth.oldest
        QUEUE_COUNTED.set(time.time())


class MetricsObserver:
    """Counts what the relay observed (an :class:`~smtpguard.relay.observe.Observer`)."""

    def received(self, r: Received) -> None:
        return None

    def dsn(self, d: DsnQueued) -> None:
        return None

    def refused(self, r: Refused) -> None:
        SUPPRESSION_HITS.labels(r.evidence or "unknown").inc()

    def attempts(self, records: Sequence[AttemptRecord]) -> None:
        for r in records:
            DOMAIN_RESULTS.inc(r.domain, RESULT[r.status])
