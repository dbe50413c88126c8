"""Postfix, Exim and Sendmail failure lines, exactly as logged, read into events."""

from __future__ import annotations

import pytest

from smtpguard.classify import default_classifier
from smtpguard.ops.logformats import LogEvent, parse_line
from smtpguard.ops.logscan import Scanner
from tests.fixtures.maillogs import ALL, NOISE, SENDMAIL_TWO_RECIPIENTS, Sample


@pytest.mark.parametrize("sample", ALL, ids=lambda s: f"{s.mta}-{s.status}-{s.recipient}")
def test_failure_line_becomes_one_event(sample: Sample) -> None:
    (event,) = parse_line(sample.line)
    got = (event.mta, event.status, event.recipient, event.reply, event.dsn, event.stage)
    want = (sample.mta, sample.status, sample.recipient, sample.reply, sample.dsn, sample.stage)
    assert got == want
    assert event.relay == sample.relay


@pytest.mark.parametrize("line", NOISE)
def test_other_lines_are_no_events(line: str) -> None:
    assert parse_line(line) == []


def test_sendmail_line_with_two_recipients_is_two_events() -> None:
    events = parse_line(SENDMAIL_TWO_RECIPIENTS)
    assert [e.recipient for e in events] == ["ivan@example.com", "judy@example.com"]
    assert {e.status for e in events} == {"bounced"}


def test_queue_id_and_time_are_kept_as_logged() -> None:
    postfix, exim = parse_line(ALL[0].line)[0], parse_line(ALL[len(ALL) - 4].line)[0]
    assert (postfix.queue_id, postfix.time) == ("4F9D195432", "Mar  1 10:00:01")
    assert exim.queue_id == "1rg2Y3-0001AH-Ij" and exim.time == "2024-03-01 10:00:07"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(default_classifier())


def verdict_of(scanner: Scanner, line: str) -> tuple[str, str, bool]:
    v = scanner.classify(parse_line(line)[0])
    return v.reason, v.bounce, v.suppress


@pytest.mark.parametrize("sample", [s for s in ALL if "User unknown" in s.reply])
def test_unknown_user_is_a_hard_bounce_of_a_bad_address(scanner: Scanner, sample: Sample) -> None:
    assert verdict_of(scanner, sample.line) == ("userunknown", "hard", True)


@pytest.mark.parametrize("sample", [s for s in ALL if s.status == "deferred"])
def test_deferrals_never_suppress(scanner: Scanner, sample: Sample) -> None:
    reason, bounce, suppress = verdict_of(scanner, sample.line)
    assert (bounce, suppress) == ("soft", False), reason


def test_mta_status_code_stands_in_for_a_missing_enhanced_status(scanner: Scanner) -> None:
    event = LogEvent("postfix", "deferred", "x@example.net", "Connection timed out", "4.4.1")
    assert scanner.classify(event).status == "4.4.1"


def test_hostile_long_line_costs_bounded_work() -> None:
    line = "Mar  1 10:00:00 mx postfix/smtp[1]: ABCDEF1234: to=<" + "a" * 200_000 + "@x>"
    assert parse_line(line[:8192]) == []
