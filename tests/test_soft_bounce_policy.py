"""Soft bounces add up to a suppression (N over at least D days, no delivery in between);
suppressions expire per reason, and prune deletes them.

Verdicts are replayed into the real sink at chosen times (``accept(now=...)``), so days
pass without waiting for them; the results are read from the real SQLite file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.errors import ConfigError
from smtpguard.policy import open_sink
from smtpguard.policy.evidence import Evidence
from smtpguard.policy.sink import SuppressionSink
from smtpguard.store.suppression import SuppressionStore

T0 = 1_800_000_000.0
DAY = 86400.0
RCPT = Evidence("rcpt-reply", "relay")
BOB = "bob@example.com"


def full(address: str = BOB, *, stage: str = "rcpt", diagnostic: str = "") -> Verdict:
    return Verdict(
        recipient=address, status="4.2.2", reply_code="452", reason="mailboxfull", bounce="soft",
        diagnostic=diagnostic or "452 4.2.2 Mailbox full", stage=stage,  # type: ignore[arg-type]
    )  # fmt: skip


def delivered(address: str = BOB) -> Verdict:
    return Verdict(recipient=address, reason="delivered", bounce="none", stage="data")


def lookup(config: Config, address: str = BOB, now: float = T0) -> object:
    with SuppressionStore.open(config.data_dir) as store:
        return store.lookup(address, now=now)


def history(config: Config, address: str = BOB) -> list[tuple[str, str]]:
    with SuppressionStore.open(config.data_dir) as store:
        return [(h.action, h.note) for h in store.history(address)]


async def soft_bounces(sink: SuppressionSink, days: list[float], **kw: object) -> list[str]:
    outcomes = []
    for day in days:
        report = await sink.accept([full(**kw)], RCPT, now=T0 + day * DAY)  # type: ignore[arg-type]
        outcomes.append(report.applied[0].outcome)
    return outcomes


async def test_five_soft_bounces_over_seven_days_suppress(
    sink: SuppressionSink, config: Config
) -> None:
    assert await soft_bounces(sink, [0, 2, 4, 6, 7]) == ["recorded"] * 4 + ["suppressed"]
    entry = lookup(config, now=T0 + 7 * DAY)
    assert entry is not None
    assert (entry.reason, entry.evidence, entry.count) == ("mailboxfull", "rcpt-reply", 5)  # type: ignore[attr-defined]
    actions = history(config)
    assert [a for a, _ in actions] == ["recorded"] * 4 + ["added"]
    assert actions[0][1] == "soft bounce 1 of 5 since 2027-01-15T08:00:00Z"
    assert actions[-1][1] == "soft bounce 5 of 5 since 2027-01-15T08:00:00Z"


async def test_many_soft_bounces_within_a_day_are_not_enough(
    sink: SuppressionSink, config: Config
) -> None:
    assert set(await soft_bounces(sink, [0, 0.1, 0.2, 0.3, 0.4, 0.5])) == {"recorded"}
    assert lookup(config) is None
    assert await soft_bounces(sink, [7]) == ["suppressed"]


async def test_a_delivery_in_between_starts_the_count_again(
    sink: SuppressionSink, config: Config
) -> None:
    await soft_bounces(sink, [0, 1, 2, 3])
    await sink.accept([delivered()], RCPT, now=T0 + 3.5 * DAY)
    assert await soft_bounces(sink, [4, 5, 6, 7]) == ["recorded"] * 4
    assert lookup(config) is None
    assert ("discarded", "delivered since: the soft bounce count starts again") in history(config)


async def test_delivery_to_a_differently_cased_address_clears_the_count(
    sink: SuppressionSink,
) -> None:
    await soft_bounces(sink, [0, 1, 2, 3])
    await sink.accept([delivered("Bob@Example.com")], RCPT, now=T0 + 3.5 * DAY)
    assert await soft_bounces(sink, [8]) == ["recorded"]


async def test_a_count_left_alone_for_a_month_starts_again(sink: SuppressionSink) -> None:
    await soft_bounces(sink, [0, 1, 2, 3])
    assert await soft_bounces(sink, [40]) == ["recorded"]  # 1 of 5 again, not 5 of 5


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(recipient=BOB, status="4.7.0", reply_code="421", reason="blocked", bounce="soft",
                diagnostic="421 4.7.0 try later", stage="rcpt"),
        full(stage="mail"),
        full(diagnostic="452 4.2.2 <other@example.com>: Mailbox full"),
    ],
    ids=["not-about-the-mailbox", "at-mail-from", "names-another-address"],
)  # fmt: skip
async def test_soft_bounces_not_about_the_recipients_mailbox_do_not_count(
    sink: SuppressionSink, config: Config, verdict: Verdict
) -> None:
    for day in range(8):
        report = await sink.accept([verdict], RCPT, now=T0 + day * DAY)
        assert report.applied[0].outcome == "ignored"
    assert history(config) == []


async def test_unverified_dsns_are_recorded_not_counted(
    sink: SuppressionSink, config: Config
) -> None:
    unverified = Evidence("dsn-unverified", "intake", note="no-token: not sent to a return path")
    for day in range(8):
        await sink.accept([full()], unverified, now=T0 + day * DAY)
    assert lookup(config, now=T0 + 8 * DAY) is None


async def test_full_mailbox_suppression_expires_after_30_days_and_prune_deletes_it(
    sink: SuppressionSink, config: Config
) -> None:
    await soft_bounces(sink, [0, 2, 4, 6, 7])
    assert lookup(config, now=T0 + 36 * DAY) is not None
    assert lookup(config, now=T0 + 37 * DAY + 1) is None
    with SuppressionStore.open(config.data_dir) as store:
        assert store.prune(actor="cli:test", now=T0 + 38 * DAY) == 1


async def test_unknown_user_never_expires(sink: SuppressionSink, config: Config) -> None:
    unknown = Verdict(
        recipient=BOB, status="5.1.1", reply_code="550", reason="userunknown", bounce="hard",
        suppress=True, diagnostic="550 5.1.1 User unknown", stage="rcpt",
    )  # fmt: skip
    await sink.accept([unknown], RCPT, now=T0)
    entry = lookup(config, now=T0 + 3650 * DAY)
    assert entry is not None and entry.expires is None  # type: ignore[attr-defined]


async def test_limit_zero_switches_soft_bounce_counting_off(data_dir: Path) -> None:
    cfg = Config().with_overrides(
        store={"data_dir": str(data_dir)}, policy={"soft_bounce_limit": 0}
    )
    s = await open_sink(cfg)
    try:
        for day in range(10):
            report = await s.accept([full()], RCPT, now=T0 + day * DAY)
            assert report.applied[0].outcome == "ignored"
    finally:
        await s.close()


def test_config_refuses_unknown_reasons_and_bad_durations(tmp_path: Path) -> None:
    from smtpguard import config

    p = tmp_path / "smtpguard.toml"
    p.write_text('[policy]\nexpiry = { mailboxfull = "soon" }\n')
    with pytest.raises(ConfigError, match="durations like 30d for 'mailboxfull'"):
        config.load(p)
    p.write_text('[policy]\nsoft_bounce_reasons = ["mailbox-full"]\n')
    with pytest.raises(ConfigError, match="classifier reasons like mailboxfull"):
        config.load(p)
