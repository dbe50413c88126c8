"""Policy decisions put into the milter's and the policy service's words (pure)."""

from __future__ import annotations

import pytest

from smtpguard.policy.recipient import ACCEPT, LOOKUP_FAILED, Decision
from smtpguard.postfix.answers import (
    PASS,
    Answer,
    milter_reply,
    policy_action,
    rcpt_answer,
    trouble_answer,
)
from smtpguard.store.entries import SuppressionEntry

ENTRY = SuppressionEntry(
    address="bob@example.com", kind="address", reason="userunknown", status="5.1.1",
    reply_code="550", diagnostic="550 5.1.1 User unknown", source="smtp-reply",
    first_seen=1_796_983_200.0, last_seen=1_796_983_200.0, count=1, expires=None,
)  # fmt: skip
TEXT = (
    "<bob@example.com>: recipient suppressed by smtpguard: userunknown since 2026-12-11T10:00:00Z"
)
SUPPRESSED = Decision("reject", 550, "5.1.1", TEXT, ENTRY)


def test_an_accepted_recipient_passes() -> None:
    assert rcpt_answer(ACCEPT, "reject", "accept") == PASS


def test_a_suppressed_recipient_is_rejected_with_the_policy_reply() -> None:
    answer = rcpt_answer(SUPPRESSED, "reject", "accept")
    assert answer == Answer("reject", 550, "5.1.1", TEXT)
    assert answer.reply == f"550 5.1.1 {TEXT}"


def test_tempfail_mode_delays_a_suppressed_recipient_with_the_same_text() -> None:
    assert rcpt_answer(SUPPRESSED, "tempfail", "accept") == Answer("tempfail", 450, "4.1.1", TEXT)


def test_discard_mode_drops_a_suppressed_recipient() -> None:
    assert rcpt_answer(SUPPRESSED, "discard", "accept").verb == "discard"


def test_a_rejection_without_a_suppression_entry_is_not_softened() -> None:
    syntax = Decision("reject", 501, "5.1.3", "Bad recipient address syntax")
    assert rcpt_answer(syntax, "tempfail", "accept") == Answer("reject", 501, "5.1.3", syntax.text)


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        ("accept", Answer("continue", trouble=True)),
        ("dunno", Answer("continue", trouble=True)),
        ("tempfail", trouble_answer("tempfail")),
        ("defer", trouble_answer("defer")),
    ],
)
def test_a_failed_lookup_answers_on_error(on_error: str, expected: Answer) -> None:
    assert rcpt_answer(LOOKUP_FAILED, "reject", on_error) == expected


def test_trouble_tempfail_is_451_4_3_0() -> None:
    assert trouble_answer("tempfail").reply.startswith("451 4.3.0 ")


def test_milter_reply_doubles_percent_signs() -> None:
    answer = Answer("reject", 550, "5.1.1", "<a@b.example>: quota 100% (50%% more)")
    assert milter_reply(answer) == ("550", "5.1.1", "<a@b.example>: quota 100%% (50%%%% more)")


def test_policy_action_is_numeric_without_the_address_postfix_adds_itself() -> None:
    assert policy_action(rcpt_answer(SUPPRESSED, "reject", "dunno")) == (
        "550 5.1.1 recipient suppressed by smtpguard: userunknown since 2026-12-11T10:00:00Z"
    )


def test_policy_action_for_tempfail_mode() -> None:
    assert policy_action(rcpt_answer(SUPPRESSED, "tempfail", "dunno")).startswith(
        "450 4.1.1 recipient suppressed by smtpguard: "
    )


def test_policy_action_for_a_pass_is_dunno() -> None:
    assert policy_action(PASS) == "DUNNO"
    assert policy_action(trouble_answer("dunno")) == "DUNNO"


def test_policy_action_for_trouble_under_defer_is_defer_if_permit() -> None:
    assert policy_action(trouble_answer("defer")) == (
        "DEFER_IF_PERMIT 4.3.0 smtpguard: temporary lookup failure, try again"
    )


def test_policy_action_keeps_text_that_does_not_start_with_an_address() -> None:
    assert policy_action(Answer("reject", 501, "5.1.3", "Bad recipient address syntax")) == (
        "501 5.1.3 Bad recipient address syntax"
    )
