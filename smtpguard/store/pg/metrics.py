"""Prometheus metrics of the fleet replication (store.backend = "postgresql")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTED = Gauge(
    "smtpguard_fleet_connected", "1 while the last push/pull with PostgreSQL succeeded."
)
LAG = Gauge(
    "smtpguard_fleet_lag_seconds",
    "Seconds since this node's cache was last known to hold the fleet's list.",
)
OUTBOX = Gauge("smtpguard_fleet_outbox", "Changes made on this node not yet in PostgreSQL.")
OUTBOX_AGE = Gauge(
    "smtpguard_fleet_outbox_age_seconds", "Age of the oldest change waiting in the outbox."
)
PUSHED = Counter("smtpguard_fleet_pushed_total", "Outbox operations applied in PostgreSQL.")
PULLED = Counter("smtpguard_fleet_pulled_total", "Rows of the fleet's list written to the cache.")
UNKNOWN = Counter(
    "smtpguard_fleet_unknown_total",
    "RCPT checks that missed the cache while it was stale, by what store.unknown answered.",
    ["answer"],
)
