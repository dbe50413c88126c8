"""Returned mail at the bounce domain: a DSN condemns the recipient its token names, or nobody."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.classify import default_classifier
from smtpguard.intake.returned import header_recipients, judge
from smtpguard.intake.verp import SignedVerpCodec
from smtpguard.relay.dsn import DsnRecipient, build_dsn
from smtpguard.store.db import connect, db_path, transaction
from smtpguard.store.messages import InboundMessage, Recipient
from smtpguard.store.queue import insert_message
from smtpguard.store.sent import SentLookup, note_milter_message

DOMAIN = "bounce.example.com"
KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_796_983_200.0
CORPUS = Path(__file__).parent / "corpus" / "sisimai-dev"
POSTFIX_DSN = (CORPUS / "lhost-postfix-04.eml").read_bytes()  # 550 5.1.1 kijitora@example.co.jp
POSTFIX_RCPT = "kijitora@example.co.jp"


@pytest.fixture
def codec() -> SignedVerpCodec:
    return SignedVerpCodec(DOMAIN, KEY)


class Sent:
    """A real database of what was sent: messages queued by the relay, signed by the milter."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lookup = SentLookup.open(data_dir)

    def queued(self, *recipients: str) -> int:
        msg = InboundMessage(
            mail_from="news@sender.example",
            recipients=tuple(Recipient(address=r) for r in recipients),
            data=b"Subject: news\r\n\r\nhello\r\n",
        )
        conn = connect(self.data_dir)
        try:
            with transaction(conn, db_path(self.data_dir)):
                return insert_message(conn, msg, now=NOW)
        finally:
            conn.close()

    def milter_signed(self, recipient: str) -> int:
        conn = connect(self.data_dir)
        try:
            with transaction(conn, db_path(self.data_dir)):
                return note_milter_message(conn, "4XyZ1", "news@sender.example", recipient, NOW)
        finally:
            conn.close()


@pytest.fixture
def sent(tmp_path: Path) -> Iterator[Sent]:
    records = Sent(tmp_path / "var")
    yield records
    records.lookup.close()


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


def test_dsn_for_a_message_never_queued_is_unverified(codec: SignedVerpCodec, sent: Sent) -> None:
    sent.queued(POSTFIX_RCPT)
    rcpt = codec.encode(999_999, POSTFIX_RCPT, now=NOW)
    evidence, _ = only(run(POSTFIX_DSN, [rcpt], codec, sent=sent.lookup))
    assert evidence.kind == "dsn-unverified"
    assert evidence.note == "unknown-message: message 999999 never went to this recipient"


def test_dsn_for_a_message_queued_for_that_recipient_is_verified(
    codec: SignedVerpCodec, sent: Sent
) -> None:
    mid = sent.queued("someone@example.co.jp", POSTFIX_RCPT)
    evidence, _ = only(run(POSTFIX_DSN, [codec.encode(mid, POSTFIX_RCPT, now=NOW)], codec,
                           sent=sent.lookup))  # fmt: skip
    assert (evidence.kind, evidence.note) == ("dsn-verified", f"return path of message {mid}")


def test_dsn_to_a_return_path_the_milter_signed_is_checked_against_its_messages(
    codec: SignedVerpCodec, sent: Sent
) -> None:
    mid = sent.milter_signed(POSTFIX_RCPT)
    assert mid >= 2**39  # the milter's own id space, apart from the queue's
    evidence, _ = only(run(POSTFIX_DSN, [codec.encode(mid, POSTFIX_RCPT, now=NOW)], codec,
                           sent=sent.lookup))  # fmt: skip
    assert evidence.kind == "dsn-verified"
    other = sent.milter_signed("someone@example.co.jp")
    evidence, _ = only(run(POSTFIX_DSN, [codec.encode(other, POSTFIX_RCPT, now=NOW)], codec,
                           sent=sent.lookup))  # fmt: skip
    assert evidence.kind == "dsn-unverified"
    assert evidence.note.startswith("unknown-message:")


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


# --------------------------------------------------------------------------- redacted complaints


def redacted_report(
    return_path: str, *, rcpt_to: str = "", original_to: str = "redacted", mail_from: bool = True
) -> bytes:
    """A feedback loop's complaint (RFC 5965) whose recipient is redacted, as Yahoo's CFL
    and others do: no Original-Rcpt-To, and the returned original's To replaced (RFC
    6590 lets a report redact the local part, or leave the address out). Only our
    signed return path still says whom the message went to."""
    fields = ["Feedback-Type: abuse", "User-Agent: ExampleFBL/2.0", "Version: 1"]
    if mail_from:
        fields.append(f"Original-Mail-From: <{return_path}>")
    if rcpt_to:
        fields.append(f"Original-Rcpt-To: <{rcpt_to}>")
    fields += [
        "Arrival-Date: Thu, 10 Dec 2026 09:58:00 +0000",
        "Reporting-MTA: dns; fbl.mail.example",
        "Source-IP: 192.0.2.25",
        "Reported-Domain: sender.example",
    ]
    lines = [
        "From: Mail Abuse Feedback <feedback@fbl.mail.example>",
        "To: fbl@sender.example",
        "Subject: Complaint about a message from sender.example",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=feedback-report; boundary="part"',
        "",
        "--part",
        "Content-Type: text/plain",
        "",
        "A recipient marked a message from sender.example as spam. Their address is redacted.",
        "",
        "--part",
        "Content-Type: message/feedback-report",
        "",
        *fields,
        "",
        "--part",
        "Content-Type: text/rfc822-headers",
        "",
        f"Return-Path: <{return_path}>",
        "From: News <news@sender.example>",
        f"To: {original_to}",
        "Subject: This week at sender.example",
        "Message-ID: <n-42@sender.example>",
        "",
        "--part--",
        "",
    ]
    return "\r\n".join(lines).encode()


COMPLAINER = "carol@yahoo.com"


def test_a_redacted_complaint_names_the_recipient_its_token_was_made_for(
    codec: SignedVerpCodec, sent: Sent
) -> None:
    mid = sent.queued("alice@yahoo.com", "Carol@Yahoo.com", "dave@example.net")
    report = redacted_report(codec.encode(mid, COMPLAINER, now=NOW))
    evidence, verdict = only(run(report, ["fbl@sender.example"], codec, sent=sent.lookup))
    assert (evidence.kind, verdict.recipient, verdict.reason) == ("arf", COMPLAINER, "feedback")
    assert evidence.note == (
        f"return path of message {mid}; the report redacts the recipient: the token names it"
    )


@pytest.mark.parametrize(
    ("milter", "report_options"),
    [
        # RFC 6590 style: the local part replaced by an opaque string, the domain kept.
        (False, {"rcpt_to": "9c2a37f1d2@yahoo.com"}),
        # No Original-Mail-From: the original's Return-Path alone carries the token.
        (False, {"mail_from": False}),
        # A message the milter signed inside Postfix (its own id space).
        (True, {}),
    ],
    ids=["local-part-redacted", "original-return-path-only", "milter-signed"],
)
def test_a_redacted_complainer_is_recovered(
    codec: SignedVerpCodec, sent: Sent, milter: bool, report_options: dict[str, object]
) -> None:
    mid = sent.milter_signed(COMPLAINER) if milter else sent.queued("alice@yahoo.com", COMPLAINER)
    report = redacted_report(codec.encode(mid, COMPLAINER, now=NOW), **report_options)  # type: ignore[arg-type]
    evidence, verdict = only(run(report, ["fbl@sender.example"], codec, sent=sent.lookup))
    assert (evidence.kind, verdict.recipient) == ("arf", COMPLAINER)


def test_a_complaint_from_another_domain_than_the_tokens_recipient_is_not_recovered(
    codec: SignedVerpCodec, sent: Sent
) -> None:
    # carol forwards to an address elsewhere, whose owner complains: not carol's complaint.
    mid = sent.queued(COMPLAINER)
    report = redacted_report(codec.encode(mid, COMPLAINER, now=NOW), rcpt_to="erin@mail.example")
    evidence, verdict = only(run(report, ["fbl@sender.example"], codec, sent=sent.lookup))
    assert (evidence.kind, verdict.recipient) == ("arf-unverified", "erin@mail.example")
    assert evidence.note.endswith("at another domain (forwarded mail)")


@pytest.mark.parametrize(
    ("token_for", "expected_note"),
    [
        (lambda codec, mid: codec.encode(mid + 1, COMPLAINER, now=NOW), "not known"),
        (lambda codec, mid: codec.encode(mid, "zoe@yahoo.com", now=NOW), "no recipient of it"),
    ],
    ids=["message-never-queued", "token-for-no-recipient-of-the-message"],
)
def test_a_redacted_complaint_is_recorded_only_when_the_token_names_no_recipient_sent_to(
    codec: SignedVerpCodec,
    sent: Sent,
    token_for,
    expected_note: str,  # type: ignore[no-untyped-def]
) -> None:
    mid = sent.queued(COMPLAINER)
    report = redacted_report(token_for(codec, mid))
    evidence, verdict = only(run(report, ["fbl@sender.example"], codec, sent=sent.lookup))
    assert (evidence.kind, verdict.recipient) == ("arf-unverified", "")
    assert evidence.note.startswith("no-recipient: the report redacts the recipient; message ")
    assert expected_note in evidence.note


def test_a_redacted_complaint_with_an_expired_or_forged_token_is_not_recovered(
    codec: SignedVerpCodec, sent: Sent
) -> None:
    mid = sent.queued(COMPLAINER)
    expired = codec.encode(mid, COMPLAINER, now=NOW - 30 * 86400)
    forged = SignedVerpCodec(DOMAIN, b"a guessed key of 32 bytes.......").encode(mid, COMPLAINER)
    for return_path in (expired, forged):
        evidence, verdict = only(
            run(redacted_report(return_path), ["fbl@sender.example"], codec, sent=sent.lookup)
        )
        assert (evidence.kind, verdict.recipient) == ("arf-unverified", "")


def test_without_a_record_of_what_was_sent_a_redacted_complaint_stays_unverified(
    codec: SignedVerpCodec,
) -> None:
    report = redacted_report(codec.encode(7, COMPLAINER, now=NOW))
    evidence, _ = only(run(report, ["fbl@sender.example"], codec))
    assert evidence.kind == "arf-unverified"
    assert evidence.note.endswith("message 7 cannot be looked up here")
