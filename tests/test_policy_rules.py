"""The evidence rules as a table: what each kind of evidence may do, whatever the verdict says."""

from __future__ import annotations

import pytest

from smtpguard.classify.verdict import Verdict
from smtpguard.policy.evidence import Evidence, EvidenceKind
from smtpguard.policy.rules import judge, named_addresses

RCPT = "bob@example.com"


def verdict(text: str = "550 5.1.1 User unknown", stage: str = "rcpt", **kw: object) -> Verdict:
    fields: dict[str, object] = {
        "recipient": RCPT, "status": "5.1.1", "reply_code": "550", "reason": "userunknown",
        "bounce": "hard", "suppress": True, "diagnostic": text, "stage": stage,
    }  # fmt: skip
    fields.update(kw)
    return Verdict(**fields)  # type: ignore[arg-type]


def ruling(v: Verdict, kind: EvidenceKind = "rcpt-reply", rcpts: tuple[str, ...] = ()) -> str:
    return judge(v, Evidence(kind, "test", transaction_recipients=rcpts), RCPT).ruling


@pytest.mark.parametrize("stage", ["connect", "helo", "mail"])
def test_a_reply_before_rcpt_never_suppresses_even_when_the_classifier_says_so(stage: str) -> None:
    assert ruling(verdict("554 5.1.1 user unknown", stage)) == "ignore"
    assert ruling(verdict("554 5.1.1 <bob@example.com> user unknown", stage)) == "ignore"


def test_a_session_reply_never_suppresses() -> None:
    assert ruling(verdict(stage="rcpt"), "session-reply") == "ignore"


def test_a_rcpt_reply_naming_no_address_suppresses_its_recipient() -> None:
    assert ruling(verdict()) == "address"


def test_a_rcpt_reply_naming_the_recipient_in_another_spelling_suppresses_it() -> None:
    assert ruling(verdict("550 5.1.1 <Bob@EXAMPLE.com>: Recipient address rejected")) == "address"


def test_a_rcpt_reply_naming_another_address_suppresses_nobody() -> None:
    assert ruling(verdict("550 5.1.1 <eve@example.com>: User unknown")) == "ignore"


def test_after_data_the_only_recipient_of_the_transaction_is_suppressed() -> None:
    assert ruling(verdict(stage="data"), "data-reply", (RCPT,)) == "address"


def test_after_data_a_reply_naming_no_one_suppresses_none_of_several_recipients() -> None:
    assert ruling(verdict(stage="data"), "data-reply", (RCPT, "amy@example.com")) == "ignore"


def test_after_data_a_reply_naming_the_recipient_suppresses_it() -> None:
    v = verdict("550 5.1.1 <bob@example.com> User unknown", "data")
    assert ruling(v, "data-reply", (RCPT, "amy@example.com")) == "address"


def test_after_data_a_reply_naming_another_address_suppresses_even_a_lone_recipient_not() -> None:
    v = verdict("550 5.1.1 <someone-else@other.example> User unknown", "data")
    assert ruling(v, "data-reply", (RCPT,)) == "ignore"


@pytest.mark.parametrize(
    "changes",
    [
        {"bounce": "soft", "reply_code": "450", "status": "4.1.1"},
        {"suppress": False},
        {"reason": "filtered"},  # a classifier flag that contradicts its own reason
    ],
)
def test_only_a_hard_verdict_about_the_address_itself_suppresses(changes: dict) -> None:
    assert ruling(verdict(**changes)) == "ignore"


@pytest.mark.parametrize("reason", ["hostunknown", "notaccept"])
def test_a_dns_answer_makes_a_domain_candidate(reason: str) -> None:
    v = verdict("Host or domain name not found", "connect", reason=reason, suppress=False)
    assert ruling(v, "dns") == "domain"


def test_a_dns_failure_that_is_not_an_answer_does_nothing() -> None:
    v = verdict("DNS timeout", "connect", reason="networkerror", bounce="soft", suppress=False)
    assert ruling(v, "dns") == "ignore"


def test_an_unverified_dsn_is_recorded_never_enforced() -> None:
    assert ruling(verdict(stage="unknown"), "dsn-unverified") == "record"


def test_a_verified_dsn_suppresses() -> None:
    assert ruling(verdict(stage="unknown"), "dsn-verified") == "address"


def test_a_complaint_suppresses_as_complaint() -> None:
    v = verdict("", "unknown", reason="feedback", bounce="none", suppress=False)
    j = judge(v, Evidence("arf", "intake"), RCPT)
    assert (j.ruling, j.reason) == ("address", "complaint")


def test_an_esps_unsubscribe_event_suppresses_as_unsubscribe() -> None:
    v = verdict("SendGrid unsubscribe event", "unknown", reason="unsubscribe", bounce="none")
    j = judge(v, Evidence("webhook", "webhook:sendgrid"), RCPT)
    assert (j.ruling, j.reason) == ("address", "unsubscribe")


@pytest.mark.parametrize("kind", ["dsn-verified", "dsn-unverified", "arf", "rcpt-reply", "log"])
def test_an_unsubscribe_counts_only_from_an_esps_event(kind: EvidenceKind) -> None:
    v = verdict("unsubscribe", "unknown", reason="unsubscribe", bounce="none")
    assert ruling(v, kind) == "ignore"


def test_named_addresses_are_suppression_keys() -> None:
    text = "550 5.1.1 <Bob@Bücher.DE>: unknown; see postmaster@example.com."
    assert named_addresses(text) == ["bob@xn--bcher-kva.de", "postmaster@example.com"]


def test_named_addresses_bounded_on_hostile_text() -> None:
    text = "a@b " * 100_000 + "x" * 1_000_000 + "@" * 1000
    assert len(named_addresses(text)) == 1
