"""Prometheus metrics of the relay engine (served when ``metrics.listen`` is set).

Counters are process-wide in prometheus_client's default registry; they cost
a lock and an add, so they are updated inline. ``smtpguard_rejections_total``
counts policy or reputation rejections per destination domain. What the
suppression list gains is counted by the policy (``policy/metrics.py``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from smtpguard.metrics import BoundedLabels

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
        "relay_denied", "suppressed", "too_many_recipients", "lookup_failed",
        "storage_failed", "too_many_sessions", "idle_timeout", "session_deadline", "slow_data",
        "too_many_from_client", "idle_closed_for_room", "junk_commands", "data_in_flight",
    )
}  # fmt: skip
