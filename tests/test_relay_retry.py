"""The retry policy: exponential backoff, greylisting delay, never past the queue lifetime."""

from __future__ import annotations

import pytest

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.relay.outcome import OutcomeHandler
from smtpguard.relay.scheduler import retry_delay
from smtpguard.store.queue import QueuedMessage, QueuedRecipient

CFG = Config().with_overrides(
    delivery={
        "retry_initial": 60.0, "retry_factor": 2.0, "retry_max": 600.0,
        "greylist_delay": 300.0, "queue_lifetime": 3600.0,
    }
)  # fmt: skip


def msg(received_at: float = 0.0) -> QueuedMessage:
    return QueuedMessage(
        id=1, kind="mail", mail_from="s@example.org", envid="", ret="", smtputf8=False,
        body_type="7BIT", size=10, received_at=received_at, auto_submitted=False, client="",
        held=False,
    )  # fmt: skip


def rcpt(attempts: int) -> QueuedRecipient:
    return QueuedRecipient(
        id=1, message_id=1, address="r@example.com", domain="example.com", notify=(),
        orcpt="", state="active", attempts=attempts, next_attempt=0.0,
    )  # fmt: skip


def soft(**extra: str) -> Verdict:
    return Verdict(reason="mailboxfull", bounce="soft", extra=dict(extra))


@pytest.mark.parametrize(("attempt", "delay"), [(1, 60), (2, 120), (3, 240), (4, 480), (5, 600)])
def test_retry_delay_doubles_up_to_the_maximum(attempt, delay):
    assert retry_delay(CFG.delivery, attempt) == delay


def test_huge_attempt_counts_stay_at_the_maximum():
    assert retry_delay(CFG.delivery, 10_000) == 600


def test_soft_failure_is_retried_after_the_backoff():
    handler = OutcomeHandler(CFG, store=None)  # type: ignore[arg-type]
    assert handler.next_attempt(msg(), rcpt(0), soft(), now=100.0) == 160.0


def test_greylisting_waits_at_least_the_greylist_delay():
    handler = OutcomeHandler(CFG, store=None)  # type: ignore[arg-type]
    assert handler.next_attempt(msg(), rcpt(0), soft(greylist="1"), now=100.0) == 400.0


def test_greylisting_honours_a_longer_retry_after():
    handler = OutcomeHandler(CFG, store=None)  # type: ignore[arg-type]
    v = soft(greylist="1", retry_after="900")
    assert handler.next_attempt(msg(), rcpt(0), v, now=100.0) == 1000.0


def test_last_retry_happens_at_the_end_of_the_queue_lifetime():
    handler = OutcomeHandler(CFG, store=None)  # type: ignore[arg-type]
    assert handler.next_attempt(msg(received_at=0.0), rcpt(5), soft(), now=3500.0) == 3600.0
    assert handler.expired(msg(received_at=0.0), now=3600.0)
