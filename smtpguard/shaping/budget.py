"""Message-rate budgets per site: the token bucket seam.

A budget answers one question before each message is sent to a site: may it
go now, and if not, how long until it may. :class:`LocalBudget` keeps the
buckets in this process; a fleet shares them through Redis (a separate
implementation of the same :class:`RateBudget` protocol), so five nodes
sending to one provider spend one budget, not five.

The bucket is the classic one (RFC 2697's token bucket without colours): it
holds at most ``burst`` tokens and refills at ``rate`` tokens per second; a
message takes one token. ``acquire`` never sleeps itself: it returns the wait,
so the caller decides what to do meanwhile (no head-of-line blocking).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RateBudget(Protocol):
    """One token bucket per site key."""

    async def acquire(self, site: str, rate: float, burst: float) -> float:
        """Take one token for ``site`` if one is there and return 0.0.

        Otherwise take nothing and return the seconds until one is expected.
        ``rate`` is tokens per second (> 0), ``burst`` the bucket's capacity
        (>= 1). A changed ``rate`` or ``burst`` applies from this call on (the
        adaptive controller lowers and raises them).
        """
        ...


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class LocalBudget:
    """Token buckets in this process's memory (the default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, site: str, rate: float, burst: float) -> float:
        """The synchronous core of :meth:`acquire` (also the fleet's fallback)."""
        now = self._clock()
        b = self._buckets.get(site)
        if b is None:
            b = self._buckets[site] = _Bucket(tokens=burst, stamp=now)
        else:
            b.tokens = min(burst, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / rate

    async def acquire(self, site: str, rate: float, burst: float) -> float:
        return self.take(site, rate, burst)
