"""One site's adaptive limits: multiplicative decrease, additive increase, suspension.

Why AIMD: a receiving MX says "too fast" (421, a 4.7.x rate wording) but never
how fast is fine. Cutting multiplicatively and climbing back linearly is what
TCP does for the same problem and what Postfix's qmgr does for destination
concurrency; it converges on the largest rate the site takes and keeps the
share of refused attempts small (one cut per crossing, then a slow climb).

* A throttle cuts the rate to ``decrease`` times the lower of the current rate
  and the rate the site actually accepted over the last :data:`WINDOW` seconds
  (the best estimate of its limit), and the connections to ``decrease`` times
  theirs (at least 1). At most one cut per ``cooldown``: a burst of replies to
  messages already under way is one signal, not twenty.
* Each success adds back so that the rate climbs by the amount of the last cut
  within ``recover`` seconds of steady sending, and the connections by 1 per
  current-connections successes (Postfix's +1/concurrency). An adaptive rate
  above the configured one (or above :data:`UNLIMITED_ABOVE` without one) is
  dropped: the site is back to its configured limits.
* ``suspend_after`` cuts or connection failures in a row, with no success
  between, suspend the site for ``suspend_for``.
* Automation rules override rate or connections (never upwards) for a while,
  or suspend the site.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from smtpguard.shaping.limits import Adaptive, SiteLimits

#: Seconds of accepted messages the throttle cut estimates the site's limit from.
WINDOW = 10.0
#: An adaptive rate without a configured one is dropped above this (messages/s).
UNLIMITED_ABOVE = 1000.0


@dataclass
class SiteState:
    """What the shaper knows about one site right now."""

    key: str
    limits: SiteLimits
    adaptive: Adaptive
    rate: float | None = None  # adaptive rate (None: the configured one)
    concurrency: float = 0.0  # adaptive connections (0: the configured ones)
    suspended_until: float = 0.0
    suspended_why: str = ""
    rate_override: float | None = None
    rate_override_until: float = 0.0
    conn_override: int = 0
    conn_override_until: float = 0.0
    last_cut: float = float("-inf")
    cut_from: float = 0.0  # the rate the last cut started from
    in_a_row: int = 0
    last_throttle: str = ""
    last_throttle_at: float = 0.0
    throttles: int = 0
    successes: int = 0
    failures: int = 0
    _accepted: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20_000), repr=False
    )
    _attempted: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20_000), repr=False
    )

    # -- what applies now -----------------------------------------------------

    def current_rate(self, now: float) -> float | None:
        """Messages per second allowed now (None: no limit)."""
        rate = self.rate if self.rate is not None else self.limits.rate
        if self.rate_override is not None and now < self.rate_override_until:
            rate = self.rate_override if rate is None else min(rate, self.rate_override)
        return rate

    def current_burst(self, rate: float) -> float:
        """The bucket's size: the configured burst, scaled down with an adaptive rate."""
        burst = float(self.limits.burst)
        configured = self.limits.rate
        if configured is not None and rate < configured:
            burst = burst * rate / configured
        elif configured is None:
            burst = 1.0
        return max(1.0, burst)

    def current_connections(self, now: float) -> int:
        conns = self.limits.connections
        if self.concurrency:
            conns = min(conns, max(1, int(self.concurrency)))
        if self.conn_override and now < self.conn_override_until:
            conns = min(conns, self.conn_override)
        return max(1, conns)

    def suspended(self, now: float) -> bool:
        return now < self.suspended_until

    def accepted_rate(self, now: float) -> float:
        """Messages per second the site accepted over the last :data:`WINDOW` seconds."""
        q = self._accepted
        while q and q[0] < now - WINDOW:
            q.popleft()
        if len(q) < 2:
            return 0.0
        span = max(now - q[0], 1.0)
        return len(q) / span

    def attempted_rate(self, now: float) -> float:
        """Messages per second tried at the site (any result) over the last window."""
        q = self._attempted
        while q and q[0] < now - WINDOW:
            q.popleft()
        if len(q) < 2:
            return 0.0
        return len(q) / max(now - q[0], 1.0)

    # -- feedback -------------------------------------------------------------

    def attempted(self, now: float) -> None:
        """Any result of a message at the site (counted before success/throttle/failure)."""
        self._attempted.append(now)

    def success(self, now: float) -> None:
        self.successes += 1
        self.in_a_row = 0
        self._accepted.append(now)
        if self.rate is not None:
            # Per second of steady sending (``rate`` successes) the rate grows by the
            # size of the last cut / recover, or by its own (1 - decrease) / recover if
            # that is more (a site cut from nothing known climbs back in finite time).
            base = max(self.cut_from, self.rate)
            step = base * (1 - self.adaptive.decrease) / self.adaptive.recover
            self.rate += max(step, 1e-6) / max(self.rate, 1e-3)
            ceiling = self.limits.rate if self.limits.rate is not None else UNLIMITED_ABOVE
            if self.rate >= ceiling:
                self.rate = None
        if self.concurrency:
            self.concurrency += 1.0 / max(self.concurrency, 1.0)
            if self.concurrency >= self.limits.connections:
                self.concurrency = 0.0

    def throttled(self, now: float, reply: str) -> bool:
        """A throttling reply; True if it cut the limits (not within the cooldown)."""
        self.throttles += 1
        self.last_throttle = reply
        self.last_throttle_at = now
        if now - self.last_cut < self.adaptive.cooldown:
            return False
        a = self.adaptive
        current = self.current_rate(now)
        accepted = self.accepted_rate(now) or self.attempted_rate(now)
        base = min(x for x in (current, accepted or None, math.inf) if x is not None)
        if math.isinf(base):
            base = 1.0  # nothing accepted yet and no limit: start from one a second
        self.cut_from = base
        self.rate = max(a.min_rate, base * a.decrease)
        self.concurrency = max(1.0, self.current_connections(now) * a.decrease)
        self.last_cut = now
        self._in_a_row(now, reply)
        return True

    def failed(self, now: float, why: str) -> bool:
        """A connection that failed (refused, timed out): fewer connections, maybe suspend."""
        self.failures += 1
        if now - self.last_cut < self.adaptive.cooldown:
            return False
        self.concurrency = max(1.0, self.current_connections(now) * self.adaptive.decrease)
        self.last_cut = now
        self._in_a_row(now, why)
        return True

    def _in_a_row(self, now: float, why: str) -> None:
        self.in_a_row += 1
        if self.in_a_row >= self.adaptive.suspend_after:
            self.suspend(now, self.adaptive.suspend_for, why)
            self.in_a_row = 0

    def suspend(self, now: float, duration: float, why: str) -> None:
        until = now + duration
        if until > self.suspended_until:
            self.suspended_until = until
            self.suspended_why = why

    def override_rate(self, now: float, rate: float, duration: float) -> None:
        self.rate_override = rate
        self.rate_override_until = now + duration

    def override_connections(self, now: float, connections: int, duration: float) -> None:
        self.conn_override = connections
        self.conn_override_until = now + duration
