"""Sites after routing, the AIMD controller, automation matching, the shaper's pacing."""

from __future__ import annotations

import asyncio
import random

import pytest

from smtpguard.classify.verdict import Verdict
from smtpguard.relay.outcome import Attempt
from smtpguard.relay.routing import NextHop
from smtpguard.shaping import limits
from smtpguard.shaping.automation import Automation
from smtpguard.shaping.budget import LocalBudget
from smtpguard.shaping.controller import SiteState
from smtpguard.shaping.limits import Adaptive, AutomationRule, SiteLimits
from smtpguard.shaping.shaper import SiteShaper, throttle_reply
from smtpguard.shaping.sites import SiteMap
from smtpguard.store.messages import QueuedRecipient


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def hop(host: str, port: int = 25, pref: int = 10, source: str = "mx") -> NextHop:
    return NextHop(host, "192.0.2.1", port, pref, source, "opportunistic")


RCPT = QueuedRecipient(
    id=1, message_id=1, address="r@example.com", domain="example.com", notify=(), orcpt="",
    state="active", attempts=0, next_attempt=0.0,
)  # fmt: skip


def reply(code: str, text: str, *, reason: str = "undefined", status: str = "",
          greylist: bool = False) -> Attempt:  # fmt: skip
    v = Verdict(recipient=RCPT.address, reply_code=code, status=status, reason=reason,
                bounce="soft", diagnostic=f"{code} {text}", stage="mail", format="relay",
                extra={"greylist": "1"} if greylist else {})  # fmt: skip
    return Attempt(RCPT, v, code, text)


DELIVERED = Attempt(RCPT, None, "250", "2.0.0 Ok")

# --------------------------------------------------------------------------- sites

SITES = SiteMap(limits.load())


def test_domains_on_one_providers_mx_are_one_site():
    one = SITES.site("a.example", [hop("aspmx.l.google.com")])
    two = SITES.site("b.example", [hop("alt1.aspmx.l.google.com")])
    assert one == two == "google"


def test_a_suffix_matches_whole_labels_only():
    assert SITES.site("a.example", [hop("mx.notgoogle.com")]) == "mx:mx.notgoogle.com"


def test_unknown_mx_sets_are_one_site_per_set():
    one = SITES.site("a.example", [hop("mx1.host.example"), hop("mx2.host.example", pref=20)])
    two = SITES.site("b.example", [hop("mx2.host.example", pref=20), hop("mx1.host.example")])
    assert one == two == "mx:mx1.host.example,mx2.host.example"


def test_the_most_preferred_mx_decides_the_provider():
    site = SITES.site("a.example", [hop("x.mail.protection.outlook.com"),
                                    hop("backup.a.example", pref=50)])  # fmt: skip
    assert site == "microsoft"


def test_smarthost_and_dsn_are_sites_of_their_own():
    assert SITES.site("smarthost", [hop("relay.esp.example", 587, source="smarthost")]) == (
        "smarthost"
    )
    assert SITES.site("dsn", [hop("127.0.0.1", 25, source="route")]) == "dsn"


def test_a_non_standard_port_is_part_of_the_site():
    assert SITES.site("a.example", [hop("mx.a.example", 2525)]) == "mx:mx.a.example:2525"


# --------------------------------------------------------------------------- AIMD


def state(rate: float | None = None, connections: int = 10, **adaptive: float) -> SiteState:
    return SiteState("s", SiteLimits(connections=connections, rate=rate), Adaptive(**adaptive))


def test_a_throttle_cuts_rate_and_connections_multiplicatively():
    st = state(rate=20.0, connections=8, decrease=0.5)
    st.throttled(100.0, "421 4.7.0 slow down")
    assert st.current_rate(100.0) == 10.0
    assert st.current_connections(100.0) == 4


def test_the_cut_starts_from_what_the_site_accepted():
    st = state(rate=None, decrease=0.5)
    for i in range(50):
        st.success(100.0 + i * 0.1)  # 10/s for 5 s
    st.throttled(105.0, "421 4.7.0 slow down")
    assert st.current_rate(105.0) == pytest.approx(5.0, rel=0.05)


def test_throttles_within_the_cooldown_cut_once():
    st = state(rate=20.0, decrease=0.5, cooldown=1.0)
    st.throttled(100.0, "421")
    st.throttled(100.5, "421")
    assert st.current_rate(100.5) == 10.0


def test_successes_climb_back_to_the_cut_rate_within_recover():
    st = state(rate=20.0, decrease=0.5, recover=10.0)
    st.throttled(100.0, "421")
    t = 100.0
    while st.rate is not None and t < 140.0:  # send at the current rate
        t += 1.0 / st.current_rate(t)
        st.success(t)
    assert st.rate is None  # back to the configured 20/s
    assert 9.0 <= t - 100.0 <= 12.0


def test_repeated_throttles_without_success_suspend_the_site():
    st = state(rate=20.0, suspend_after=3, suspend_for=60.0, cooldown=1.0)
    for t in (100.0, 102.0, 104.0):
        st.throttled(t, "421 4.7.0 go away")
    assert st.suspended(104.5)
    assert not st.suspended(164.5)


def test_a_success_between_throttles_resets_the_count():
    st = state(rate=20.0, suspend_after=2, cooldown=1.0)
    st.throttled(100.0, "421")
    st.success(101.0)
    st.throttled(102.0, "421")
    assert not st.suspended(102.5)


def test_concurrency_climbs_back_one_per_current_connections_successes():
    st = state(connections=10, decrease=0.5)
    st.throttled(100.0, "421")
    assert st.current_connections(100.0) == 5
    for _ in range(6):  # about one per connection
        st.success(101.0)
    assert st.current_connections(101.0) == 6


# --------------------------------------------------------------------------- throttles


def test_421_is_a_throttle():
    assert throttle_reply(reply("421", "4.7.0 Try again later"))


def test_a_ratelimited_verdict_is_a_throttle():
    assert throttle_reply(reply("450", "4.2.1 receiving mail too quickly", reason="ratelimited"))


def test_greylisting_is_not_a_throttle():
    a = reply("451", "4.7.1 Greylisted, try again later", reason="ratelimited", greylist=True)
    assert not throttle_reply(a)


def test_a_mailbox_full_reply_is_not_a_throttle():
    assert not throttle_reply(reply("452", "4.2.2 Mailbox full", reason="mailboxfull"))


# --------------------------------------------------------------------------- automation

RULES = Automation((
    AutomationRule("only-b", r"overload", "suspend", 60.0, sites=("b",)),
    AutomationRule("tss04", r"\[TSS04\]", "suspend", 1800.0),
))  # fmt: skip


def test_automation_matches_the_reply_text_case_insensitively():
    rule = RULES.match("yahoo", "421 4.7.0 [tss04] Messages from 192.0.2.1 temporarily deferred")
    assert rule is not None and rule.id == "tss04"


def test_automation_rule_limited_to_sites_ignores_others():
    assert RULES.match("a", "421 overload") is None
    assert RULES.match("b", "421 overload").id == "only-b"


def test_shipped_rules_know_yahoos_tss04():
    shipped = Automation(limits.load().automation)
    text = ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to"
            " unexpected volume or user complaints")  # fmt: skip
    rule = shipped.match("yahoo", text)
    assert rule is not None and rule.action == "suspend"


def shaper(text: str, tmp_path) -> tuple[SiteShaper, Clock]:
    path = tmp_path / "s.toml"
    path.write_text(text)
    clock = Clock()
    return SiteShaper(limits.load(path), LocalBudget(clock=clock), clock=clock,
                      rng=random.Random(1)), clock  # fmt: skip


def test_an_automation_suspend_holds_the_sites_jobs_for_its_duration(tmp_path):
    s, clock = shaper('[[automation]]\nid = "x"\nmatch = "go away"\naction = "suspend"\n'
                      'duration = "10s"\n', tmp_path)  # fmt: skip
    s.feedback("mx:a", [reply("421", "4.7.0 go away")])
    assert 10.0 <= s.hold("mx:a", 0) <= 13.0
    clock.now += 10.5
    assert s.hold("mx:a", 0) == 0.0


def test_an_automation_rate_caps_the_site_for_its_duration(tmp_path):
    s, clock = shaper('[[automation]]\nid = "x"\nmatch = "RP-001"\naction = "rate"\n'
                      'value = "60/min"\nduration = "1h"\n', tmp_path)  # fmt: skip
    s.feedback("mx:a", [reply("421", "RP-001 too many")])
    assert s.state("mx:a").current_rate(clock.now) == 1.0
    clock.now += 3601
    assert s.state("mx:a").current_rate(clock.now) is None


# --------------------------------------------------------------------------- pacing


def test_admit_paces_to_the_sites_rate(tmp_path):
    s, clock = shaper('[defaults]\nrate = "2/s"\n', tmp_path)
    assert asyncio.run(s.admit("mx:a")) == 0.0
    assert asyncio.run(s.admit("mx:a")) == pytest.approx(0.5)
    clock.now += 0.5
    assert asyncio.run(s.admit("mx:a")) == 0.0


def test_the_global_cap_spans_sites(tmp_path):
    s, _ = shaper('[global]\nrate = "1/s"\n', tmp_path)
    assert asyncio.run(s.admit("mx:a")) == 0.0
    assert asyncio.run(s.admit("mx:b")) > 0.0


def test_a_full_line_postpones_with_jitter_not_in_lockstep(tmp_path):
    s, _ = shaper('[defaults]\nrate = "1/s"\nconnections = 1\n', tmp_path)
    delays = {round(s.hold("mx:a", 40), 3) for _ in range(10)}
    assert len(delays) > 1
    assert all(delays) and s.hold("mx:a", 5) == 0.0


class BrokenBudget:
    async def acquire(self, site: str, rate: float, burst: float) -> float:
        raise ConnectionError("budget store unreachable")


def test_a_failing_budget_falls_back_to_local_buckets(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[defaults]\nrate = "1/s"\n')
    s = SiteShaper(limits.load(path), BrokenBudget())
    assert asyncio.run(s.admit("mx:a")) == 0.0
    assert asyncio.run(s.admit("mx:a")) > 0.0
