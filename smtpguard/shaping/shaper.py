"""The relay's :class:`~smtpguard.relay.seams.Shaper`: sites, limits, pacing, feedback.

It answers the delivery side's questions about a *site* (see
:mod:`smtpguard.shaping.sites`): how many connections, how many messages per
connection and recipients per transaction, whether another job may wait in the
site's line or should be postponed (:meth:`SiteShaper.hold`), and, before each
message, whether it may go now (:meth:`SiteShaper.admit`, a token from the
site's bucket and the global one, through the
:class:`~smtpguard.shaping.budget.RateBudget`). Every message's result comes
back through :meth:`SiteShaper.feedback`, which drives the AIMD controller and
the automation rules.

What counts as throttling (not greylisting, which is about one message): a 421
reply, the classifier's ``ratelimited`` and ``badreputation`` verdicts, and a
4.7.x status whose wording speaks of rate or volume. A connection that could not
be made (refused, timed out, no greeting) is a failure: fewer connections, and
in a row they suspend the site like throttles do.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpguard.shaping import metrics
from smtpguard.shaping.automation import Automation
from smtpguard.shaping.budget import LocalBudget, RateBudget
from smtpguard.shaping.controller import SiteState
from smtpguard.shaping.limits import ShapingRules, SiteLimits, backlog, format_rate
from smtpguard.shaping.sites import SiteMap
from smtpguard.smtp.text import log_safe

if TYPE_CHECKING:
    from smtpguard.relay.outcome import Attempt
    from smtpguard.relay.routing import NextHop

log = logging.getLogger("smtpguard.shaping")

#: The budget key of the global cap (no site is called this: site keys have no '*').
GLOBAL = "*global*"
#: Verdict reasons that mean "you are sending too much / too badly": slow down.
THROTTLE_REASONS = frozenset({"ratelimited", "badreputation"})
#: Wording of a 4.7.x reply that is about rate or volume.
_RATE_WORDS = re.compile(
    r"rate|too (?:many|fast|much)|volume|throttl|slow down|try (?:again )?later|limit", re.I
)
#: How long a full line of a site without a rate and without successes yet takes to drain.
UNKNOWN_DRAIN = 10.0
#: Sites idle (nothing sent, nothing waiting, not suspended) this long are forgotten.
FORGET_AFTER = 3600.0


def throttle_reply(a: Attempt) -> str:
    """The reply text if this attempt's reply is a throttle, else ``""``."""
    v = a.verdict
    if v is None or v.extra.get("greylist"):
        return ""
    code = a.code or v.reply_code
    text = f"{a.code} {a.text}" if a.code else (v.diagnostic or f"{code} {v.status}")
    if code == "421" or v.reason in THROTTLE_REASONS:
        return text
    if v.status.startswith("4.7.") and _RATE_WORDS.search(text[:512]):
        return text
    return ""


def connection_failure(a: Attempt) -> str:
    """The text of a connection that was never made (no reply at all), else ``""``."""
    v = a.verdict
    if v is None or a.code or v.reply_code:
        return ""
    if v.reason == "networkerror" and v.stage == "connect":
        return v.diagnostic or "connection failed"
    return ""


@dataclass(frozen=True)
class SiteView:
    """One site as ``smtpguard queue sites`` and the metrics show it."""

    site: str
    configured_rate: float | None
    current_rate: float | None
    configured_connections: int
    current_connections: int
    suspended_until: float
    suspended_why: str
    last_throttle: str
    last_throttle_at: float
    throttles: int
    successes: int
    failures: int


class SiteShaper:
    """Per-site shaping with limits from :class:`ShapingRules` and a :class:`RateBudget`."""

    def __init__(
        self, rules: ShapingRules, budget: RateBudget, *, default_port: int = 25,
        clock: Callable[[], float] = time.time, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.rules = rules
        self.budget = budget
        self._sites = SiteMap(rules, default_port)
        self._providers = {p.name: p for p in rules.providers}
        self._automation = Automation(rules.automation)
        self._clock = clock
        self._rng = rng or random.Random()
        self._states: dict[str, SiteState] = {}
        self._seen: dict[str, float] = {}  # site -> last time anything happened there
        self._prepaid: set[str] = set()  # sites holding a site token, waiting for a global one
        self._suspension_noted: dict[str, float] = {}  # site -> suspension end already logged
        self._fallback = LocalBudget()
        self._budget_warned = float("-inf")

    # -- sites ----------------------------------------------------------------

    def site(self, destination: str, hops: Sequence[NextHop]) -> str:
        return self._sites.site(destination, hops)

    def limits(self, site: str) -> SiteLimits:
        """The configured limits of ``site`` (its provider's, the smarthost's, or the defaults)."""
        p = self._providers.get(site)
        if p is not None:
            return p.limits
        if site == "smarthost":
            return self.rules.smarthost
        return self.rules.defaults

    def state(self, site: str) -> SiteState:
        st = self._states.get(site)
        if st is None:
            st = self._states[site] = SiteState(site, self.limits(site), self.rules.adaptive)
        self._seen[site] = self._clock()
        return st

    # -- the delivery side's questions ---------------------------------------

    def max_connections(self, site: str) -> int:
        return self.state(site).current_connections(self._clock())

    def messages_per_connection(self, site: str) -> int:
        return self.limits(site).messages_per_connection

    def recipients_per_message(self, site: str) -> int:
        return self.limits(site).recipients

    def suspended_until(self, site: str) -> float:
        """When a suspension of ``site`` ends (0.0 or a past time: it is not suspended)."""
        st = self._states.get(site)
        return st.suspended_until if st is not None else 0.0

    def hold(self, site: str, queued: int) -> float:
        """0.0 if a job may join ``site``'s line with ``queued`` jobs waiting, else
        the seconds to postpone it by (with jitter, so postponed mail comes back spread)."""
        now = self._clock()
        st = self.state(site)
        if st.suspended(now):
            jitter = 1.0 + self._rng.uniform(0, st.adaptive.jitter)
            return (st.suspended_until - now) * jitter + self._rng.uniform(0, 1.0)
        if queued < 20:  # below any line's bound
            return 0.0
        rate = st.current_rate(now)
        if queued < backlog(rate, st.current_connections(now)):
            return 0.0
        # Back when about half the line has gone (spread over that span), so the
        # line neither runs dry nor takes them all back at once. Without a rate, the
        # pace the site has been accepting at; none yet (new, or unresponsive): 10 s.
        speed = rate or st.accepted_rate(now)
        drain = queued / speed if speed else UNKNOWN_DRAIN
        return max(1.0, drain * self._rng.uniform(0.5, 1.0))

    def backoff(self, site: str) -> float:
        """After a failed connection: how long the site's other waiting jobs go back to
        the queue (unattempted): the rest of a suspension, else a short pause that
        doubles with each failure in a row (2 s, 4 s, ... at most a minute), jittered."""
        now = self._clock()
        st = self.state(site)
        jitter = 1.0 + self._rng.uniform(0, st.adaptive.jitter)
        if st.suspended(now):
            return (st.suspended_until - now) * jitter
        return min(60.0, 2.0 ** max(st.in_a_row, 1)) * jitter

    async def admit(self, site: str) -> float:
        """0.0 and a token taken if a message may go to ``site`` now, else the seconds to wait."""
        now = self._clock()
        st = self.state(site)
        if st.suspended(now):
            return st.suspended_until - now
        rate = st.current_rate(now)
        if rate is not None and site not in self._prepaid:
            wait = await self._acquire(site, rate, st.current_burst(rate))
            if wait > 0:
                return wait
        self._prepaid.discard(site)
        g = self.rules.global_rate
        if g is not None:
            wait = await self._acquire(GLOBAL, g, float(self.rules.global_burst))
            if wait > 0:
                if rate is not None:
                    self._prepaid.add(site)  # keep the site's token for the next try
                return wait
        return 0.0

    async def _acquire(self, key: str, rate: float, burst: float) -> float:
        """A token from the budget; if the budget itself fails (a bug, an outage the
        backend did not absorb), from this process's buckets: never a crashed delivery."""
        try:
            return await self.budget.acquire(key, rate, burst)
        except Exception as e:
            now = self._clock()
            if now - self._budget_warned > 60:
                self._budget_warned = now
                log.warning("rate budget failed (%r); pacing with local buckets", e)
            return self._fallback.take(key, rate, burst)

    def feedback(self, site: str, attempts: Sequence[Attempt]) -> None:
        """One message's results at ``site``: success, throttle or connection failure."""
        if not attempts:
            return
        now = self._clock()
        st = self.state(site)
        st.attempted(now)
        throttle = failure = ""
        answered = automated = False
        for a in attempts:
            if a.verdict is None:
                answered = True
                continue
            throttle = throttle or throttle_reply(a)
            failure = failure or connection_failure(a)
            if not connection_failure(a):
                answered = True
            automated = automated or self._automate(st, a, now)
        if automated:
            # The provider's documented words said what to do; the rule did it.
            metrics.THROTTLES.inc(site)
            st.throttles += 1
        elif throttle:
            metrics.THROTTLES.inc(site)
            if st.throttled(now, log_safe(throttle[:300])):
                log.info("site %s throttled us (%s): rate %s, connections %d", site,
                         log_safe(throttle[:200]), _rate(st.current_rate(now)),
                         st.current_connections(now))  # fmt: skip
        elif failure:
            st.failed(now, log_safe(failure[:300]))
        elif answered:
            st.success(now)
        if st.suspended(now) and st.suspended_until > self._suspension_noted.get(site, 0.0):
            metrics.SUSPENSIONS.inc(site)
            log.warning("site %s suspended until %s: %s", site,
                        time.strftime("%H:%M:%S", time.localtime(st.suspended_until)),
                        st.suspended_why)  # fmt: skip
            self._suspension_noted[site] = st.suspended_until

    def _automate(self, st: SiteState, a: Attempt, now: float) -> bool:
        """Apply the first automation rule matching this reply; True if one did."""
        if not len(self._automation):
            return False
        v = a.verdict
        assert v is not None
        reply = f"{a.code} {a.text}" if a.code else v.diagnostic
        rule = self._automation.match(st.key, reply)
        if rule is None:
            return False
        why = f"automation {rule.id}: {log_safe(reply[:200])}"
        st.last_throttle, st.last_throttle_at = log_safe(reply[:300]), now
        if rule.action == "suspend":
            st.suspend(now, rule.duration, why)
        elif rule.action == "rate" and rule.rate is not None:
            st.override_rate(now, rule.rate, rule.duration)
            log.info("site %s: rate %s for %.0fs (%s)", st.key, _rate(rule.rate),
                     rule.duration, why)  # fmt: skip
        elif rule.action == "connections":
            st.override_connections(now, rule.connections, rule.duration)
            log.info("site %s: %d connections for %.0fs (%s)", st.key, rule.connections,
                     rule.duration, why)  # fmt: skip
        return True

    # -- what it looks like ---------------------------------------------------

    def views(self) -> list[SiteView]:
        """Every site known, forgetting long-idle ones first."""
        now = self._clock()
        for site, seen in list(self._seen.items()):
            st = self._states.get(site)
            if now - seen > FORGET_AFTER and (st is None or not st.suspended(now)):
                self._seen.pop(site, None)
                self._states.pop(site, None)
        out = []
        for site, st in self._states.items():
            out.append(
                SiteView(
                    site=site, configured_rate=st.limits.rate, current_rate=st.current_rate(now),
                    configured_connections=st.limits.connections,
                    current_connections=st.current_connections(now),
                    suspended_until=st.suspended_until if st.suspended(now) else 0.0,
                    suspended_why=st.suspended_why if st.suspended(now) else "",
                    last_throttle=st.last_throttle, last_throttle_at=st.last_throttle_at,
                    throttles=st.throttles, successes=st.successes, failures=st.failures,
                )
            )  # fmt: skip
        return out


def _rate(r: float | None) -> str:
    return format_rate(r)
