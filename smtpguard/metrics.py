"""Process-wide Prometheus plumbing: bounded label sets and the /metrics endpoint.

The metrics themselves live with what they measure (``relay/metrics.py``,
``policy/metrics.py``); counters cost a lock and an add, so they are updated inline.
prometheus_client's ``*_created`` series (a timestamp per counter child) are
switched off: they double the scrape for nothing an alert uses.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from prometheus_client import Counter, disable_created_metrics, start_http_server

from smtpguard.config import parse_hostport

disable_created_metrics()


class BoundedLabels:
    """A label value per key for the first ``limit`` keys, then ``other``.

    A label per domain is what an operator wants to see ("who is refusing
    us?"), but an unbounded label set would grow Prometheus's memory with
    every domain ever mailed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> str:
        if key in self._seen:
            return key
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(key)
                return key
        return "other"


class KeyedCounter:
    """A Counter whose first label is a bounded key (a destination domain, a site).

    ``RESULTS = KeyedCounter("smtpguard_domain_deliveries_total", "...", "domain",
    ["result"], keys=domain_label)``; ``RESULTS.inc("example.com", "bounced")``.
    Pass the same :class:`BoundedLabels` to every metric keyed alike, so that a
    key is ``other`` in all of them or in none.
    """

    def __init__(
        self, name: str, doc: str, key: str, labels: Sequence[str] = (), *,
        keys: BoundedLabels,
    ) -> None:  # fmt: skip
        self.keys = keys
        self.counter = Counter(name, doc, [key, *labels])

    def inc(self, key: str, *labels: str, amount: float = 1.0) -> None:
        self.counter.labels(self.keys(key), *labels).inc(amount)


def serve(listen: str) -> None:
    """Start the /metrics HTTP endpoint on ``HOST:PORT`` (a daemon thread)."""
    host, port = parse_hostport(listen)
    start_http_server(port, addr=host)
