"""The storm breaker: when a destination suddenly calls many addresses dead, hold back.

In December 2020 Gmail answered ``550 5.1.1`` for real users for hours; a
sender that suppresses on every such reply loses good addresses by the
thousand. So, per destination (the recipient's domain, or a site key), over a
sliding window of ``policy.storm_window`` (default 10 minutes):

    storm  <=>  suppressing > storm_share * max(attempts, storm_min_attempts)

``attempts`` counts every attempt to the destination (deliveries included);
``suppressing`` counts the verdicts that passed every evidence rule and would
suppress. With the defaults (20%, 50 attempts) a destination may cost up to 10
new suppressions per window however little mail it gets, and more only while
they stay within 20% of its attempts: a sudden burst of "user unknown" is
held back after the tenth, a large list with a normal share of dead addresses
never trips it. While a destination is in a storm, new suppressions for it
become *pending* (see :mod:`smtpguard.policy.sink` for how they are settled),
a warning is logged and ``smtpguard_suppression_storm`` is set. The storm ends
when the share over the window is back at or under the threshold.

Counts are kept per process, in a few buckets per destination (no per-attempt
memory), so a relay sending thousands of messages a second pays a dict lookup
and two additions per verdict.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field

from smtpguard.policy import metrics

log = logging.getLogger("smtpguard.policy")

#: Buckets per window: the window slides in steps of a tenth.
BUCKETS = 10
#: Destinations tracked at once; the least recently seen is forgotten beyond it.
MAX_DESTINATIONS = 100_000


@dataclass
class _Window:
    buckets: collections.deque[list[int]] = field(default_factory=collections.deque)
    attempts: int = 0
    suppressing: int = 0
    storm: bool = False


class StormBreaker:
    """Per-destination counts over a sliding window, and the storm decision."""

    def __init__(self, share: float, min_attempts: int, window: float) -> None:
        self.share = share
        self.min_attempts = min_attempts
        self.window = window
        self._width = window / BUCKETS
        self._windows: collections.OrderedDict[str, _Window] = collections.OrderedDict()

    def _current(self, destination: str, now: float) -> _Window:
        w = self._windows.get(destination)
        if w is None:
            w = self._windows[destination] = _Window()
            if len(self._windows) > MAX_DESTINATIONS:
                _, old = self._windows.popitem(last=False)
                if old.storm:
                    metrics.STORMS.dec()
        else:
            self._windows.move_to_end(destination)
        bucket = math.floor(now / self._width)
        while w.buckets and w.buckets[0][0] <= bucket - BUCKETS:
            _, a, s = w.buckets.popleft()
            w.attempts -= a
            w.suppressing -= s
        if not w.buckets or w.buckets[-1][0] != bucket:
            w.buckets.append([bucket, 0, 0])
        return w

    def _decide(self, destination: str, w: _Window) -> bool:
        storm = w.suppressing > self.share * max(w.attempts, self.min_attempts)
        if storm != w.storm:
            w.storm = storm
            if storm:
                metrics.STORMS.inc()
            else:
                metrics.STORMS.dec()
            metrics.STORM.labels(metrics.destination_label(destination)).set(int(storm))
            if storm:
                log.warning(
                    "suppression storm at %s: %d of %d attempts in the last %.0fs would suppress;"
                    " new suppressions for it are pending (smtpguard suppression pending"
                    " --destination %s)",
                    destination, w.suppressing, w.attempts, self.window, destination,
                )  # fmt: skip
            else:
                log.info("suppression storm at %s is over", destination)
        return storm

    def attempt(self, destination: str, now: float) -> None:
        """Count one attempt to ``destination`` (any result)."""
        w = self._current(destination, now)
        w.buckets[-1][1] += 1
        w.attempts += 1

    def suppressing(self, destination: str, now: float) -> bool:
        """Count a verdict that would suppress; True when it must be held back (storm)."""
        w = self._current(destination, now)
        w.buckets[-1][2] += 1
        w.suppressing += 1
        return self._decide(destination, w)

    def in_storm(self, destination: str, now: float) -> bool:
        if destination not in self._windows:
            return False
        w = self._current(destination, now)
        return self._decide(destination, w)

    def storms(self, now: float) -> list[str]:
        """Destinations in a storm now (also ends storms whose window has passed)."""
        return [d for d in list(self._windows) if self.in_storm(d, now)]
