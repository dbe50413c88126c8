"""The verdict sink over a real SQLite file: DNS sightings, the storm breaker, settling.

The relay-level tests (``test_evidence_rules.py``, ``test_storm.py``) show the
rules end to end; these replay verdicts at chosen times (``accept(now=...)``),
so an hour or a storm window passes without waiting for it.
"""

from __future__ import annotations

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.policy.evidence import Evidence
from smtpguard.policy.sink import SuppressionSink
from smtpguard.store.suppression import SuppressionStore

T0 = 1_800_000_000.0
RCPT = Evidence("rcpt-reply", "relay")
DNS = Evidence("dns", "relay")


def unknown(address: str) -> Verdict:
    return Verdict(
        recipient=address, status="5.1.1", reply_code="550", reason="userunknown", bounce="hard",
        suppress=True, diagnostic="550 5.1.1 User unknown", stage="rcpt",
    )  # fmt: skip


def delivered(address: str) -> Verdict:
    return Verdict(recipient=address, reason="delivered", bounce="none", stage="data")


def nxdomain(address: str) -> Verdict:
    return Verdict(
        recipient=address, status="5.1.2", reply_code="550", reason="hostunknown", bounce="hard",
        diagnostic="Host or domain name not found", stage="connect",
    )  # fmt: skip


def store(config: Config) -> SuppressionStore:
    return SuppressionStore.open(config.data_dir)


async def test_one_applied_per_verdict_in_order(sink: SuppressionSink) -> None:
    report = await sink.accept(
        [unknown("a@x.example"), delivered("b@x.example"), unknown("c@x.example")], RCPT, now=T0
    )
    assert [(a.address, a.outcome) for a in report.applied] == [
        ("a@x.example", "suppressed"), ("b@x.example", "ignored"), ("c@x.example", "suppressed"),
    ]  # fmt: skip


async def test_dns_answer_suppresses_its_domain_only_when_seen_again_an_hour_later(
    sink: SuppressionSink, config: Config
) -> None:
    first = await sink.accept([nxdomain("a@dead.example")], DNS, now=T0)
    assert first.applied[0].outcome == "recorded"
    soon = await sink.accept([nxdomain("b@dead.example")], DNS, now=T0 + 3599)
    assert soon.applied[0].outcome == "recorded"
    later = await sink.accept([nxdomain("c@dead.example")], DNS, now=T0 + 3600)
    assert (later.applied[0].address, later.applied[0].outcome) == ("dead.example", "suppressed")
    with store(config) as s:
        e = s.lookup("anyone@dead.example", now=T0 + 3601)
        assert e is not None and e.kind == "domain" and e.evidence == "dns"
        assert e.expires == T0 + 3600 + 30 * 86400  # default dns_expiry
        assert s.lookup("anyone@dead.example", now=T0 + 3601 + 30 * 86400) is None


async def test_dns_sighting_older_than_the_expiry_starts_afresh(sink: SuppressionSink) -> None:
    await sink.accept([nxdomain("a@dead.example")], DNS, now=T0)
    stale = await sink.accept([nxdomain("b@dead.example")], DNS, now=T0 + 31 * 86400)
    assert stale.applied[0].outcome == "recorded"


async def test_storm_holds_back_suppressions_beyond_the_threshold(
    sink: SuppressionSink, config: Config
) -> None:
    report = await sink.accept([unknown(f"u{i}@big.example") for i in range(30)], RCPT, now=T0)
    outcomes = [a.outcome for a in report.applied]
    assert outcomes == ["suppressed"] * 10 + ["pending"] * 20  # 20% of at least 50
    with store(config) as s:
        assert s.lookup("u10@big.example", now=T0) is None  # pending is not enforced
        assert len(s.pending(destination="big.example")) == 20


async def test_a_normal_share_of_dead_addresses_is_no_storm(sink: SuppressionSink) -> None:
    verdicts = [unknown(f"u{i}@big.example") if i % 10 == 0 else delivered(f"u{i}@big.example")
                for i in range(500)]  # fmt: skip
    report = await sink.accept(verdicts, RCPT, now=T0)
    assert {a.outcome for a in report.applied if a.outcome != "ignored"} == {"suppressed"}


async def test_pending_entry_is_discarded_when_the_address_is_delivered_to(
    sink: SuppressionSink, config: Config
) -> None:
    await sink.accept([unknown(f"u{i}@big.example") for i in range(12)], RCPT, now=T0)
    report = await sink.accept([delivered("u11@big.example")], RCPT, now=T0 + 5)
    assert report.applied[0].outcome == "discarded"
    with store(config) as s:
        assert s.get_pending("u11@big.example") is None
        assert [h.action for h in s.history("u11@big.example")] == ["pending", "discarded"]


async def test_pending_entry_is_confirmed_by_fresh_evidence_after_the_storm(
    sink: SuppressionSink, config: Config
) -> None:
    await sink.accept([unknown(f"u{i}@big.example") for i in range(12)], RCPT, now=T0)
    during = await sink.accept([unknown("u11@big.example")], RCPT, now=T0 + 60)
    assert during.applied[0].outcome == "pending"  # still in the storm: no confirmation
    after = await sink.accept([unknown("u11@big.example")], RCPT, now=T0 + 700)
    assert after.applied[0].outcome == "suppressed"
    with store(config) as s:
        e = s.lookup("u11@big.example", now=T0 + 700)
        assert e is not None and e.count == 3 and e.first_seen == T0
        assert [h.action for h in s.history("u11@big.example")] == [
            "pending", "pending", "confirmed", "updated",
        ]  # fmt: skip


async def test_operator_settles_pending_entries(sink: SuppressionSink, config: Config) -> None:
    await sink.accept([unknown(f"u{i}@big.example") for i in range(13)], RCPT, now=T0)
    with store(config) as s:
        assert s.settle_pending(["u10@big.example"], confirm=True, actor="cli:test") == [
            "u10@big.example"
        ]
        assert s.settle_pending(["U11@big.example", "nobody@big.example"], confirm=False,
                                actor="cli:test") == ["u11@big.example"]  # fmt: skip
        assert s.lookup("u10@big.example") is not None
        assert s.lookup("u11@big.example") is None
        assert [p.entry.address for p in s.pending()] == ["u12@big.example"]


async def test_record_mode_writes_history_only(config: Config) -> None:
    cfg = config.with_overrides(policy={"modes": {"rcpt-reply": "record"}})
    sink = await SuppressionSink.open(cfg)
    try:
        report = await sink.accept([unknown("a@x.example")], RCPT, now=T0)
    finally:
        await sink.close()
    assert report.applied[0].outcome == "recorded"
    with store(config) as s:
        assert s.lookup("a@x.example", now=T0) is None
        assert [(h.action, h.evidence) for h in s.history("a@x.example")] == [
            ("recorded", "rcpt-reply")
        ]
