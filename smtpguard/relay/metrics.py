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

#: Distinct destination domains given their own label; later ones count as "other".
#: A label per domain is what an operator wants to see ("who is refusing us?"), but
#: an unbounded label set would grow Prometheus's memory with every domain ever mailed.
MAX_DOMAIN_LABELS = 1000
_domain_labels: set[str] = set()


def domain_label(domain: str) -> str:
    """``domain`` itself for the first :data:`MAX_DOMAIN_LABELS` domains, else ``other``."""
    if domain in _domain_labels:
        return domain
    if len(_domain_labels) < MAX_DOMAIN_LABELS:
        _domain_labels.add(domain)
        return domain
    return "other"


def serve(listen: str) -> None:
    """Start the /metrics HTTP endpoint on ``HOST:PORT`` (a daemon thread)."""
    host, port = parse_hostport(listen)
    start_http_server(port, addr=host)
