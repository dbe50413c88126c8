"""Site budgets shared by a fleet through Redis, with this node's buckets as the fallback.

Five nodes each sending a provider its full budget send it five budgets.
:class:`RedisBudget` keeps one token bucket per site in Redis, so every node
spends the same one. The bucket's arithmetic is :class:`LocalBudget`'s, run
inside Redis as one Lua script (EVALSHA): read, refill, take and write happen
atomically, whatever the number of nodes, and the clock is Redis's own
``TIME``, so nodes whose clocks disagree still agree on the bucket.

Redis is a helper, never a dependency of delivery. Every call is bounded
(``timeout``, 100 ms by default: connect, send and read together). When Redis
refuses the connection, drops it or answers an error, or no call has been
answered for :data:`STRIKES` timeouts (and as many calls), the node goes local: its decisions come
from a :class:`LocalBudget` with the same limits (times ``fallback_share``).
It says so once (a warning, then a reminder at most every
:data:`REMINDER_INTERVAL`) and counts it (``smtpguard_shaping_shared_*``).
A single slow answer is not an outage (a busy machine has them): that message
is told to ask again after ``timeout``, and no token is granted locally beside
the shared bucket.

While Redis is out, messages do not each try it again (no connect storm
against a server that is down): the first message after a backoff (1 s
doubling to 30 s, jittered so a fleet does not probe in step) is the probe;
while it is in flight, the others stay local. The probe's first answer
switches the node back.

Keys are ``smtpguard:budget:<site>`` (a hash: ``tokens``, ``stamp``) with a
time to live of one full refill: a bucket left alone that long is full, which
is exactly what a missing key means, so idle sites cost Redis nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection

from prometheus_client import Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from smtpguard.config import redact_url
from smtpguard.shaping.budget import LocalBudget

log = logging.getLogger("smtpguard.shaping")

#: Key of a site's bucket: ``smtpguard:budget:<site>``.
KEY_PREFIX = "smtpguard:budget:"
#: Default bound of one Redis call (connect included).
DEFAULT_TIMEOUT = 0.1
#: First and longest wait before Redis is tried again after a failure.
PROBE_INITIAL = 1.0
PROBE_MAX = 30.0
#: Slow answers in a row, and timeouts without any answer, that make an outage.
STRIKES = 3
#: While Redis stays unreachable, the warning is repeated at most this often.
REMINDER_INTERVAL = 300.0

FALLBACKS = Counter(
    "smtpguard_shaping_shared_fallbacks_total",
    "Rate-budget decisions taken from this node's local buckets because Redis was unreachable.",
)
OUTAGES = Counter(
    "smtpguard_shaping_shared_outages_total",
    "Times the shared (Redis) rate budget became unreachable and this node went local.",
)
SLOW = Counter(
    "smtpguard_shaping_shared_slow_total",
    "Redis budget calls that got no answer within shaping.shared_timeout (the message asks"
    " again shortly; several in a row make an outage).",
)
SHARED_UP = Gauge(
    "smtpguard_shaping_shared_up",
    "1 while site budgets are shared through Redis, 0 while this node uses local limits.",
)

# The token bucket of LocalBudget.take, in Redis. KEYS[1]: the bucket;
# ARGV: rate (tokens/s), burst (capacity). Returns the wait in seconds as a
# string (Redis turns Lua numbers into integers). An elapsed time below zero
# (Redis restarted on a host whose clock is behind) refills nothing.
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(b[1])
local stamp = tonumber(b[2])
if tokens == nil or stamp == nil then
  tokens = burst
else
  local elapsed = now - stamp
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'stamp', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


class RedisBudget:
    """:class:`~smtpguard.shaping.budget.RateBudget` shared by every node on one Redis.

    ``url`` is ``redis://[[USER]:PASSWORD@]HOST:PORT/DB``, ``rediss://`` (TLS)
    or ``unix:///path/redis.sock?db=N``. ``fallback_share`` scales rate and
    burst while Redis is unreachable (1/nodes keeps the fleet within the
    budget at the cost of speed; 1.0, the default, gives each node the full
    limit). ``prefix`` is the key prefix (tests give each their own).
    ``local_keys`` are budgets that belong to this node, never shared (the
    global cap of this node's sending IPs, the DSNs to its own Postfix).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        fallback_share: float = 1.0,
        prefix: str = KEY_PREFIX,
        local_keys: Collection[str] = (),
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.where = redact_url(url)
        self.timeout = timeout
        self.fallback_share = fallback_share
        self.prefix = prefix
        self.local_keys = frozenset(local_keys)
        self.local = LocalBudget(clock=clock)
        self._clock = clock
        # No retries inside the client: one bounded attempt, then the local answer.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._redis = Redis(connection_pool=pool)
        self._script = self._redis.register_script(_SCRIPT)
        self.shared = True  # until a call fails
        self._probing = False
        self._retry_at = 0.0
        self._backoff = PROBE_INITIAL
        self._down_since = 0.0
        self._reminded_at = 0.0
        self._local_answers = 0
        self._strikes = 0
        self._last_answer = clock()
        SHARED_UP.set(1)
        log.info("site rate budgets shared through Redis at %s", self.where)

    async def acquire(self, site: str, rate: float, burst: float) -> float:
        """The shared bucket's answer, or this node's when Redis cannot give one in time."""
        if site in self.local_keys:
            return self.local.take(site, rate, burst)
        probe = False
        if not self.shared:
            now = self._clock()
            if self._probing or now < self._retry_at:
                self._remind(now)
                return self._local(site, rate, burst)
            probe = self._probing = True
        try:
            async with asyncio.timeout(self.timeout):
                wait = await self._shared(site, rate, burst)
        except (OSError, RedisError) as e:  # TimeoutError is an OSError
            if self._failed(e, probe=probe):
                return self._local(site, rate, burst)
            # One slow answer: the token may or may not have been taken; ask again
            # shortly rather than grant one locally beside the shared bucket.
            SLOW.inc()
            return self.timeout
        finally:
            if probe:
                self._probing = False
        self._strikes = 0
        self._last_answer = self._clock()
        if probe:
            self._came_back()
        return wait

    async def _shared(self, site: str, rate: float, burst: float) -> float:
        answer = await self._script(keys=[self.prefix + site], args=[repr(rate), repr(burst)])
        return float(answer)

    def _local(self, site: str, rate: float, burst: float) -> float:
        FALLBACKS.inc()
        self._local_answers += 1
        share = self.fallback_share
        return self.local.take(site, rate * share, max(1.0, burst * share))

    def _remind(self, now: float) -> None:
        if now - self._reminded_at >= REMINDER_INTERVAL:
            self._reminded_at = now
            log.warning(
                "Redis at %s still unreachable after %.0fs: %d budget decisions"
                " taken locally so far",
                self.where, now - self._down_since, self._local_answers,
            )  # fmt: skip

    def _failed(self, error: BaseException, *, probe: bool) -> bool:
        """True when this failure means Redis is out (answer locally). A refused or
        broken connection is an outage at once; slow answers are one only when
        :data:`STRIKES` calls in a row are slow and Redis has not answered for
        :data:`STRIKES` timeouts (a stalled process times out all its calls at once:
        that is not an outage)."""
        slow = isinstance(error, (TimeoutError, RedisTimeoutError))
        if self.shared and slow:
            self._strikes += 1
            silent = self._clock() - self._last_answer
            if self._strikes < STRIKES or silent < STRIKES * self.timeout:
                return False
        self._went_down(error, probe=probe)
        return True

    def _went_down(self, error: BaseException, *, probe: bool) -> None:
        """The first failure warns and goes local; a failed probe doubles the wait."""
        now = self._clock()
        if self.shared:
            self.shared = False
            self._down_since = self._reminded_at = now
            self._local_answers = 0
            self._backoff = PROBE_INITIAL
            OUTAGES.inc()
            SHARED_UP.set(0)
            log.warning(
                "Redis at %s unreachable (%s); site rate budgets are local to this"
                " node until it answers again",
                self.where, _describe(error),
            )  # fmt: skip
        elif probe:
            self._backoff = min(self._backoff * 2, PROBE_MAX)
        else:
            return  # a call that was in flight when Redis went: the outage is known
        # Jitter: a fleet that lost Redis together does not probe it in step.
        self._retry_at = now + self._backoff * random.uniform(0.8, 1.2)

    def _came_back(self) -> None:
        self.shared = True
        SHARED_UP.set(1)
        log.info(
            "Redis at %s answers again after %.1fs; site rate budgets are shared again"
            " (%d decisions were taken locally)",
            self.where, self._clock() - self._down_since, self._local_answers,
        )  # fmt: skip

    async def aclose(self) -> None:
        """Close the connections (the relay calls this when it stops)."""
        await self._redis.aclose()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
