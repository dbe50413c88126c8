"""Prometheus metrics per site (bounded labels: the first sites seen, then ``other``).

Counters are bumped where things happen (a throttle, a suspension, a postponed
job); the gauges (limits, open connections, waiting jobs) are set from the
shaper's state every time the relay writes its state snapshot, never per message.
"""

from __future__ import annotations

from prometheus_client import Gauge

from smtpguard.metrics import BoundedLabels, KeyedCounter

#: Distinct sites given their own label; later ones count as "other".
MAX_SITE_LABELS = 500
site_label = BoundedLabels(MAX_SITE_LABELS)

THROTTLES = KeyedCounter(
    "smtpguard_site_throttles_total", "Throttling replies per site (421, 4.7.x rate wording).",
    "site", keys=site_label,
)  # fmt: skip
SUSPENSIONS = KeyedCounter(
    "smtpguard_site_suspensions_total", "Times a site was suspended.", "site", keys=site_label
)
POSTPONED = KeyedCounter(
    "smtpguard_site_postponed_total",
    "Jobs put back in the queue unattempted (site suspended or its line full).",
    "site", keys=site_label,
)  # fmt: skip
RATE = Gauge(
    "smtpguard_site_rate", "Message rate limit per site (messages/s; -1: none).", ["site", "kind"]
)
CONNECTION_LIMIT = Gauge(
    "smtpguard_site_connection_limit", "Connection limit per site.", ["site", "kind"]
)
CONNECTIONS = Gauge("smtpguard_site_connections", "Connections open per site.", ["site"])
WAITING = Gauge("smtpguard_site_waiting", "Jobs waiting in the site's line.", ["site"])
SUSPENDED = Gauge("smtpguard_site_suspended", "1 while the site is suspended.", ["site"])
