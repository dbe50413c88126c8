"""Returned mail at the bounce domain: a DSN condemns the recipient its token names, or nobody."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.classify import default_classifier
from smtpguard.intake.returned import header_recipients, judge
from smtpguard.intake.verp import SignedVerpCodec
from smtpguard.relay.dsn import DsnRecipient, build_dsn

DOMAIN = "bounce.example.com"
KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_796_983_200.0
CORPUS = Path(__file__).parent / "corpus" / "sisimai-dev"
POSTFIX_DSN = (CORPUS / "lhost-postfix-04.eml").read_bytes()  # 550 5.1.1 kijitora@example.co.jp
POSTFIX_RCPT = "kijitora@example.co.jp"


@pytest.fixture
def codec() -> SignedVerpCodec:
    return SignedVerpCodec(DOMAIN, KEY)


def run(data: bytes, recipients: list[str], codec: SignedVerpCodec | None, **kw: object):  # type: ignore[no-untyped-def]
    return judge(
        data,
        recipients,
        codec=codec,
        classifier=default_classifier(),
        actor="intake",
        now=NOW,
        **kw,  # type: ignore[arg-type]
    )


def only(judgement):  # type: ignore[no-untyped-def]
    ((batch),) = judgement.batches
    (verdict,) = batch.verdicts
    return batch.evidence, verdict


def test_real_dsn_to_its_signed_return_path_is_verified(codec: SignedVerpCodec) -> None:
    rcpt = codec.encode(4711, POSTFIX_RCPT, now=NOW)
    evidence, verdict = only(run(POSTFIX_DSN, [rcpt], codec))
    assert (evidence.kind, evidence.actor) == ("dsn-verified", "intake")
    assert evidence.note == "return path of message 4711"
    assert (verdict.recipient, verdict.reason, verdict.suppress) == (
        POSTFIX_RCPT,
        "userunknown",
        True,
    )
    assert verdict.return_path_token == rcpt.partition("@")[0]


def tampered(c: SignedVerpCodec) -> str:
    good = c.encode(4711, POSTFIX_RCPT, now=NOW)
    return good[:10] + ("b" if good[10] != "b" else "c") + good[11:]


def guessed_key(c: SignedVerpCodec) -> str:
    return SignedVerpCodec(DOMAIN, b"a guessed key of 32 bytes.......").encode(4711, POSTFIX_RCPT)


@pytest.mark.parametrize(
    ("make_rcpt", "reason"),
    [
        (lambda c: f"bounces@{DOMAIN}", "no-token"),
        (tampered, "bad-signature"),
        (lambda c: c.encode(4711, POSTFIX_RCPT, now=NOW - 30 * 86400), "expired"),
        (lambda c: c.encode(4711, "someone-else@example.co.jp", now=NOW), "other-recipient"),
        (guessed_key, None),
    ],
)
def test_same_dsn_without_a_valid_token_is_unverified(
    codec: SignedVerpCodec,
    make_rcpt,
    reason: str | None,  # type: ignore[no-untyped-def]
) -> None:
    evidence, verdict = only(run(POSTFIX_DSN, [make_rcpt(codec)], codec))
    assert evidence.kind == "dsn-unverified"
    if reason is not None:
        assert evidence.note.startswith(reason + ":")
    else:
        assert evidence.note.split(":")[0] in ("unknown-key", "bad-signature")
    assert verdict.suppress  # the classifier's opinion stands; the evidence is what is weak


def test_dsn_for_a_message_never_queued_is_unverified(codec: SignedVerpCodec) -> None:
    rcpt = codec.encode(999_999, POSTFIX_RCPT, now=NOW)
    evidence, _ = only(run(POSTFIX_DSN, [rcpt], codec, sent=lambda mid, r: mid < 5000))
    assert evidence.kind == "dsn-unverified"
    assert evidence.note == "unknown-message: message 999999 never went to this recipient"


def test_dsn_without_a_bounce_domain_configured_is_unverified() -> None:
    evidence, _ = only(run(POSTFIX_DSN, [f"x@{DOMAIN}"], None))
    assert (evidence.kind, evidence.note) == (
        "dsn-unverified", "no-token: no bounce domain is configured",
    )  # fmt: skip


def test_dsn_the_relay_built_is_verified_for_its_recipient(codec: SignedVerpCodec) -> None:
    original = b"From: a@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
    rcpt = codec.encode(42, "bob@example.net", now=NOW)
    dsn = build_dsn(
        original=original,
        mail_from=rcpt,
        envid="",
        ret="HDRS",
        recipients=[
            DsnRecipient(
                address="bob@example.net",
                orcpt="",
                action="failed",
                status="5.1.1",
                diagnostic="smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected",
                remote_mta="mx.example.net",
                last_attempt=NOW,
            )
        ],
        reporting_mta="mx.example.net",
        arrival_date=NOW - 60,
        now=NOW,
    )
    evidence, verdict = only(run(dsn, [rcpt], codec))
    assert evidence.kind == "dsn-verified"
    assert (verdict.recipient, verdict.reason, verdict.suppress) == (
        "bob@example.net",
        "userunknown",
        True,
    )
    # Read from a mailbox (no envelope): the To header names the return path.
    evidence, _ = only(run(dsn, [], codec))
    assert evidence.kind == "dsn-verified"


def test_delay_notice_is_soft_and_suppresses_nothing(codec: SignedVerpCodec) -> None:
    data = (CORPUS / "lhost-gmail-06.eml").read_bytes()  # 450 4.2.2 mailbox full
    rcpt = codec.encode(7, "kijitora@example.jp", now=NOW)
    evidence, verdict = only(run(data, [rcpt], codec))
    assert evidence.kind == "dsn-verified"
    assert (verdict.bounce, verdict.suppress) == ("soft", False)


ARF_RCPT = "this-local-part-does-not-exist-on-yahoo@yahoo.com"


def test_arf_report_without_our_return_path_is_unverified(codec: SignedVerpCodec) -> None:
    # Anyone can mail an ARF report: one that cannot be tied to our send is only recorded.
    data = (CORPUS / "arf-02.eml").read_bytes()
    evidence, verdict = only(run(data, [f"fbl@{DOMAIN}"], codec))
    assert evidence.kind == "arf-unverified"
    assert (verdict.reason, verdict.feedback_type) == ("feedback", "abuse")


def test_arf_report_whose_original_carries_our_signed_return_path_is_arf(
    codec: SignedVerpCodec,
) -> None:
    # The feedback loop mails the report to its own registered address, but the reported
    # original keeps the Return-Path it was delivered with: our signed one.
    token = codec.encode(7, ARF_RCPT, now=NOW)
    data = (CORPUS / "arf-02.eml").read_bytes()
    data = data.replace(b"Return-Path: <shironeko@example.com>", f"Return-Path: <{token}>".encode())
    evidence, verdict = only(run(data, ["abuse@example.com"], codec))
    assert evidence.kind == "arf"
    assert verdict.recipient == ARF_RCPT


def test_arf_report_with_a_token_for_another_recipient_is_unverified(
    codec: SignedVerpCodec,
) -> None:
    token = codec.encode(7, "someone-else@yahoo.com", now=NOW)
    data = (CORPUS / "arf-02.eml").read_bytes()
    data = data.replace(b"Return-Path: <shironeko@example.com>", f"Return-Path: <{token}>".encode())
    evidence, _ = only(run(data, ["abuse@example.com"], codec))
    assert evidence.kind == "arf-unverified"


def test_vacation_reply_changes_nothing(codec: SignedVerpCodec) -> None:
    data = (CORPUS / "rfc3834-01.eml").read_bytes()
    judgement = run(data, [codec.encode(7, "kijitora@example.net", now=NOW)], codec)
    assert judgement.batches == ()
    assert [v.reason for v in judgement.ignored] == ["vacation"]
    assert judgement.summary() == "ignored kijitora@example.net vacation"


def test_ordinary_mail_is_not_a_bounce(codec: SignedVerpCodec) -> None:
    data = b"From: someone@example.org\r\nTo: b@bounce.example.com\r\nSubject: hello\r\n\r\nhi\r\n"
    judgement = run(data, [f"b@{DOMAIN}"], codec)
    assert not judgement.is_bounce
    assert judgement.summary() == "not a bounce"


def test_header_recipients_prefer_delivered_to_and_stay_at_the_bounce_domain() -> None:
    data = (
        b"Delivered-To: b+abc@bounce.example.com\r\n"
        b"To: b+xyz@bounce.example.com, someone@example.org\r\n\r\n"
    )
    assert header_recipients(data, DOMAIN) == ["b+abc@bounce.example.com"]
    assert header_recipients(b"To: a@example.org\r\n\r\n", DOMAIN) == []
