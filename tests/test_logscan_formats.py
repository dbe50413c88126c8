"""Postfix, Exim and Sendmail failure lines, exactly as logged, read into events."""

from __future__ import annotations

from datetime import datetime

import pytest

from smtpguard.classify import default_classifier
from smtpguard.ops.logformats import LogEvent, parse_line, timestamp
from smtpguard.ops.logscan import Scanner
from tests.fixtures.maillogs import ALL, NOISE, SENDMAIL_TWO_RECIPIENTS, Sample


@pytest.mark.parametrize("sample", ALL, ids=lambda s: f"{s.mta}-{s.status}-{s.recipient}")
def test_failure_line_becomes_one_event(sample: Sample) -> None:
    (event,) = parse_line(sample.line) or []
    got = (event.mta, event.status, event.recipient, event.reply, event.dsn, event.stage)
    want = (sample.mta, sample.status, sample.recipient, sample.reply, sample.dsn, sample.stage)
    assert got == want
    assert event.relay == sample.relay


@pytest.mark.parametrize("line", NOISE)
def test_other_lines_are_no_events(line: str) -> None:
    assert not parse_line(line)


def test_known_lines_that_report_nothing_are_told_from_unknown_ones() -> None:
    sent, retry = NOISE[2], NOISE[6]  # Postfix status=sent; Exim "retry time not reached"
    assert parse_line(sent) == [] and parse_line(retry) == []
    assert parse_line("Mar  1 10:00:00 mx postfix/smtp[1]: status=bounced (garbage)") is None


@pytest.mark.parametrize(
    ("line", "recipient"),
    [
        (NOISE[2], "al@example.com"),  # Postfix status=sent
        (NOISE[5], "al@example.com"),  # Exim =>
        (NOISE[-1], "al@example.com"),  # Sendmail dsn=2.0.0 stat=Sent
        (
            "2024-03-01 10:00:00 1rg2Xx-0001AB-Cd => al <al@example.com> R=virtual_user"
            " T=dovecot_delivery",
            "al@example.com",
        ),
    ],
)
def test_deliveries_are_read_when_asked(line: str, recipient: str) -> None:
    (event,) = parse_line(line, deliveries=True) or [None]
    assert event is not None and (event.status, event.recipient) == ("delivered", recipient)


@pytest.mark.parametrize(
    ("logged", "epoch"),
    [
        ("2024-03-01T10:00:00.5+01:00", 1709283600.5),
        ("2024-03-01T09:00:00Z", 1709283600.0),
        ("2024-03-01 10:00:00 +0100", 1709283600.0),  # Exim with log_timezone
    ],
)
def test_logged_times_with_a_date_are_read_exactly(logged: str, epoch: float) -> None:
    assert timestamp(logged) == epoch


def test_syslog_times_get_the_year_that_puts_them_in_the_past() -> None:
    reference = datetime(2026, 1, 2, 12, 0).timestamp()
    assert datetime.fromtimestamp(timestamp("Dec 31 23:00:00", reference) or 0).year == 2025
    assert datetime.fromtimestamp(timestamp("Jan  2 11:00:00", reference) or 0).year == 2026


def test_sendmail_line_with_two_recipients_is_two_events() -> None:
    events = parse_line(SENDMAIL_TWO_RECIPIENTS) or []
    assert [e.recipient for e in events] == ["ivan@example.com", "judy@example.com"]
    assert {e.status for e in events} == {"bounced"}


def test_queue_id_and_time_are_kept_as_logged() -> None:
    ((postfix,), (exim,)) = parse_line(ALL[0].line), parse_line(ALL[len(ALL) - 4].line)
    assert (postfix.queue_id, postfix.time) == ("4F9D195432", "Mar  1 10:00:01")
    assert exim.queue_id == "1rg2Y3-0001AH-Ij" and exim.time == "2024-03-01 10:00:07"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(default_classifier())


def verdict_of(scanner: Scanner, line: str) -> tuple[str, str, bool]:
    (event,) = parse_line(line) or []
    v = scanner.classify(event)
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
    assert not parse_line(line[:8192] + ", status=bounced (x)")
