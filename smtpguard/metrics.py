"""Process-wide Prometheus plumbing: bounded label sets and the /metrics endpoint.

The metrics themselves live with what they measure (``relay/metrics.py``,
``policy/metrics.py``); counters cost a lock and an add, so they are updated inline.
"""

from __future__ import annotations

import threading

from prometheus_client import start_http_server

from smtpguard.config import parse_hostport


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


def serve(listen: str) -> None:
    """Start the /metrics HTTP endpoint on ``HOST:PORT`` (a daemon thread)."""
    host, port = parse_hostport(listen)
    start_http_server(port, addr=host)
