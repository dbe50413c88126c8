"""Prometheus metrics of the relay engine (served when ``metrics.listen`` is set).

Counters are process-wide in prometheus_client's default registry; they cost
a lock and an add, so they are updated inline. ``smtpguard_rejections_total``
is the "policy or reputation rejection, counted per destination" of issue 4.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from smtpguard.config import parse_hostport

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
SUPPRESSED = Counter(
    "smtpguard_suppressed_total", "Recipients put on the suppression list.", ["reason"]
)
DSNS = Counter("smtpguard_dsns_total", "DSNs generated and queued.")
CONNECTIONS = Counter(
    "smtpguard_delivery_connections_total", "Outbound connections by result.", ["result"]
)
INFLIGHT = Gauge("smtpguard_inflight_messages", "Messages claimed for delivery right now.")


def serve(listen: str) -> None:
    """Start the /metrics HTTP endpoint on ``HOST:PORT`` (a daemon thread)."""
    host, port = parse_hostport(listen)
    start_http_server(port, addr=host)
