"""Failure categories, specified with the wording servers are DOCUMENTED to send.

Each test quotes a reply (or a report shape) from a published reference - a provider's SMTP
error page, an MTA's manual, an RFC - and names it. These are not samples copied from any
corpus: they are the documented texts, with example addresses.
"""

from __future__ import annotations

import pytest

from smtpguard.classify import Classifier, Failure, default_classifier
from smtpguard.classify.decide import decide


@pytest.fixture
def clf() -> Classifier:
    return Classifier.load()


def _returned(**fields: str) -> Failure:
    return Failure(recipient="a@example.org", action="failed", **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ "user unknown" and the stage


def test_user_unknown_with_no_known_stage_stays_userunknown(clf: Classifier) -> None:
    # Postfix smtpd(8): "User unknown in virtual mailbox table" (virtual_mailbox_maps).
    v = clf.reply_line(
        "550 5.1.1 <a@example.org>: Recipient address rejected: User unknown in virtual "
        "mailbox table",
        recipient="a@example.org",
    )
    assert (v.stage, v.reason, v.suppress) == ("unknown", "userunknown", True)


def test_user_unknown_known_to_answer_data_is_filtered(clf: Classifier) -> None:
    # Sendmail op.me: "User unknown", here in reply to the end of DATA (a content filter).
    v = clf.reply_line("550 User unknown", stage="eom", recipient="a@example.org")
    assert (v.reason, v.suppress) == ("filtered", False)


def test_rfc5321_mailbox_unavailable_is_userunknown(clf: Classifier) -> None:
    # RFC 5321 section 4.2.2: "550 Requested action not taken: mailbox unavailable".
    v = clf.reply_line("550 5.5.0 Requested action not taken: mailbox unavailable", stage="rcpt")
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_qmail_no_mailbox_here_is_userunknown(clf: Classifier) -> None:
    # qmail-local(8): "Sorry, no mailbox here by that name. (#5.1.1)".
    v = clf.reply_line("550 Sorry, no mailbox here by that name. (#5.1.1)", stage="rcpt")
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_exchange_online_recipient_not_found_is_userunknown(clf: Classifier) -> None:
    # Microsoft Learn, Exchange Online NDRs: "550 5.1.10 RESOLVER.ADR.RecipientNotFound;
    # Recipient not found by SMTP address lookup".
    v = clf.reply_line(
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    )
    assert (v.reason, v.suppress) == ("userunknown", True)


# ------------------------------------------------------------------ text beats the status tables


def test_access_denied_at_mail_from_is_rejected_not_securityerror(clf: Classifier) -> None:
    # Microsoft Learn NDR 5.1.8: "550 5.1.8 Access denied, bad outbound sender".
    v = clf.reply_line("550 5.7.1 Access denied", stage="mail")
    assert (v.reason, v.suppress) == ("rejected", False)


def test_content_policy_5_7_0_is_policyviolation_not_securityerror(clf: Classifier) -> None:
    # Gmail SMTP errors: "550 5.7.1 This message violates example.com email policy." -
    # the same wording under 5.7.0 ("Other or undefined security status", RFC 3463) is still
    # a content policy.
    v = clf.reply_line("550 5.7.0 This message violates example.com email policy.", stage="eom")
    assert (v.reason, v.suppress) == ("policyviolation", False)


def test_551_user_not_local_is_hasmoved_not_norelaying(clf: Classifier) -> None:
    # RFC 5321 section 3.4: "551 User not local; please try <forward-path>".
    v = clf.reply_line("551 User not local; please try <b@example.net>", stage="rcpt")
    assert v.reason == "hasmoved"


def test_not_our_customer_is_userunknown_not_norelaying(clf: Classifier) -> None:
    # Comcast postmaster SMTP error codes: "550 5.1.1 ... Not our Customer".
    v = clf.reply_line("551 not our customer", stage="rcpt")
    assert (v.reason, v.suppress) == ("userunknown", True)


# ------------------------------------------------------------------ throttling


def test_yahoo_tss04_is_badreputation_and_soft(clf: Classifier) -> None:
    # Yahoo Sender Hub, SMTP error codes: "421 4.7.0 [TSS04] Messages from 192.0.2.1
    # temporarily deferred due to unexpected volume or user complaints - 4.16.55.1".
    v = clf.reply_line(
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1",
        stage="mail",
    )
    assert (v.reason, v.bounce, v.suppress) == ("badreputation", "soft", False)


GMAIL_RATE = (
    "450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend\r\n"
    "450 4.2.1 your message at a later time. If the user is able to receive mail at that time,"
    " your message will be delivered."
)


def test_gmail_receiving_too_quickly_is_ratelimited_not_suspend(clf: Classifier) -> None:
    # Gmail SMTP errors and codes (support.google.com/a/answer/3726730), 450 4.2.1.
    v = clf.reply(450, GMAIL_RATE, stage="rcpt", remote_host="gmail-smtp-in.l.google.com")
    assert (v.reason, v.provider, v.rule) == ("ratelimited", "google", "google.receiving-rate")
    assert (v.bounce, v.suppress) == ("soft", False)


def test_provider_is_found_from_the_recipient_domain_too(clf: Classifier) -> None:
    v = clf.reply(450, GMAIL_RATE, stage="rcpt", recipient="a@gmail.com")
    assert (v.provider, v.reason) == ("google", "ratelimited")


def test_gmail_rate_limit_with_unsolicited_mail_is_ratelimited(clf: Classifier) -> None:
    # Gmail SMTP errors: "421 4.7.28 ... Our system has detected an unusual rate of
    # unsolicited mail originating from your IP address."
    v = clf.reply(
        421,
        "4.7.28 Our system has detected an unusual rate of unsolicited mail originating from "
        "your IP address. To protect our users from spam, mail sent from your IP address has "
        "been temporarily rate limited.",
        remote_host="mx.google.com",
    )
    assert (v.reason, v.bounce) == ("ratelimited", "soft")


# ------------------------------------------------------------------ gave up retrying


@pytest.mark.parametrize(
    "text",
    [
        # Exim spec, "Retry configuration": the address fails when every host has failed
        # past the retry cutoff.
        "all hosts for 'example.org' have been failing for a long time (and retry time not "
        "reached)",
        "retry timeout exceeded",
        # Sendmail op.me, Timeout.queuereturn.
        "Message could not be delivered for 5 days",
        "Cannot send message for 5 days",
        # qmail-send(8) / QSBMF.
        "I'm not going to try again; this message has been in the queue too long.",
        # Microsoft Learn, Exchange Online NDR 4.4.7.
        "550 4.4.7 QUEUE.Expired; message expired",
        # Sendmail's deferral text, returned once the queue lifetime ran out.
        "Deferred: Connection timed out with mx.example.org.",
        "Delivery failed after 12 attempts",
    ],
)
def test_retry_timeout_wordings_are_expired(text: str) -> None:
    v = decide(_returned(diagnostic=text), default_classifier().rules)
    assert (v.reason, v.suppress) == ("expired", False)


# ------------------------------------------------------------------ what never suppresses


@pytest.mark.parametrize("stage", ["connect", "greeting", "helo", "ehlo", "starttls", "mail"])
def test_no_reply_before_rcpt_to_ever_suppresses(clf: Classifier, stage: str) -> None:
    v = clf.reply_line("550 5.1.1 <a@example.org>: User unknown", stage=stage,
                       recipient="a@example.org")  # fmt: skip
    assert v.suppress is False


def test_reply_naming_another_address_never_suppresses_this_recipient(clf: Classifier) -> None:
    v = clf.reply_line(
        "550 5.1.1 <b@example.org>: Recipient address rejected: User unknown in local "
        "recipient table",
        stage="rcpt",
        recipient="a@example.org",
    )
    assert (v.reason, v.suppress) == ("userunknown", False)


def test_reply_naming_this_recipient_and_a_postmaster_contact_suppresses(clf: Classifier) -> None:
    v = clf.reply_line(
        "550 5.1.1 <a@example.org>: User unknown; contact postmaster@example.org",
        stage="rcpt",
        recipient="a@example.org",
    )
    assert v.suppress is True


# ------------------------------------------------------------------ returned-message structure


def _dsn(blocks: str, explanation: str = "Delivery failed.") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        "To: bounces@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\n{explanation}\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n\r\n{blocks}\r\n--B--\r\n"
    ).encode()


def test_original_recipient_is_the_address_suppressed_and_both_are_kept(clf: Classifier) -> None:
    # RFC 3464 2.3.1/2.3.2: Original-Recipient is the address the sender gave; Final-Recipient
    # the one the reporting MTA last tried (after an alias or forward).
    raw = _dsn(
        "Original-Recipient: rfc822; info@example.org\r\n"
        "Final-Recipient: rfc822; owner.name@mail.example.org\r\nAction: failed\r\n"
        "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown"
    )
    (v,) = clf.message(raw)
    assert (v.recipient, v.original_recipient, v.final_recipient) == (
        "info@example.org", "info@example.org", "owner.name@mail.example.org",
    )  # fmt: skip
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_sendmail_expanded_from_alias_is_the_address_sent_to(clf: Classifier) -> None:
    # Sendmail's returned-mail text lists the failed address with "(expanded from: <alias>)".
    raw = (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>\r\n"
        b"To: bounces@example.com\r\nSubject: Returned mail: see transcript for details\r\n\r\n"
        b"   ----- The following addresses had permanent fatal errors -----\r\n"
        b"<jane@mail.example.net>\r\n"
        b"    (reason: 550 5.1.1 <jane@mail.example.net>... User unknown)\r\n"
        b"    (expanded from: <sales@example.net>)\r\n"
    )
    (v,) = clf.message(raw)
    assert (v.recipient, v.final_recipient, v.original_recipient) == (
        "sales@example.net", "jane@mail.example.net", "sales@example.net",
    )  # fmt: skip


def test_qsbmf_bounce_is_read_by_structure(clf: Classifier) -> None:
    # qmail-send's bounce format (QSBMF, cr.yp.to/proto/qsbmf.txt): a paragraph per
    # recipient, "<address>:" then the reason, then the break line before the original.
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.com\r\n"
        b"Subject: failure notice\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.example.net.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        b"<a@example.org>:\r\n"
        b"Sorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        b"--- Below this line is a copy of the message.\r\n\r\n"
        b"Return-Path: <bounces@example.com>\r\nTo: a@example.org, c@example.org\r\n"
    )
    (v,) = clf.message(raw)
    assert (v.recipient, v.reason, v.suppress) == ("a@example.org", "userunknown", True)


def test_plain_text_fallback_never_reports_list_or_role_addresses(clf: Classifier) -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: news-bounces@lists.example.com\r\n"
        b"Subject: Undeliverable message\r\n\r\n"
        b"Your message could not be delivered. Please contact <postmaster@mx.example.net>\r\n"
        b"or the list owner <news-owner@lists.example.com>; replies go to\r\n"
        b"<news-request@lists.example.com>. Mail from <MAILER-DAEMON@mx.example.net>.\r\n"
    )
    assert clf.message(raw) == []


def test_challenge_response_request_is_not_a_bounce(clf: Classifier) -> None:
    # TMDA / allow-list confirmation requests: "Please confirm your message", asking the
    # sender to reply to get on the recipient's approved senders list.
    raw = (
        b"From: a@example.org\r\nTo: news@example.com\r\n"
        b"Subject: Please confirm your message\r\nAuto-Submitted: auto-replied\r\n\r\n"
        b"I use a challenge/response system. Your message is being held until you confirm\r\n"
        b"it: reply to this message to confirm, and you will be added to my approved\r\n"
        b"senders list.\r\n"
    )
    assert clf.message(raw) == []


def test_every_report_of_a_multi_report_arf_message_is_read(clf: Classifier) -> None:
    # RFC 5965: each multipart/report carries one feedback report; a digest attaches several
    # as message/rfc822 parts.
    def report(n: int) -> str:
        return (
            f'Content-Type: multipart/report; report-type=feedback-report; boundary="R{n}"\r\n'
            "\r\n"
            f"--R{n}\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n"
            f"--R{n}\r\nContent-Type: message/feedback-report\r\n\r\n"
            "Feedback-Type: abuse\r\nUser-Agent: Example-FBL/1.0\r\nVersion: 1\r\n"
            f"Original-Rcpt-To: reader{n}@example.org\r\n"
            f"--R{n}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: news@example.com\r\nTo: reader{n}@example.org\r\n"
            f"Message-ID: <m{n}@example.com>\r\n"
            f"--R{n}--\r\n"
        )

    raw = (
        "From: fbl@isp.example\r\nTo: fbl@example.com\r\nSubject: FBL digest\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="D"\r\n\r\n'
        + "".join(f"--D\r\nContent-Type: message/rfc822\r\n\r\n{report(n)}\r\n" for n in (1, 2))
        + "--D--\r\n"
    ).encode()
    found = clf.message(raw)
    assert [(v.recipient, v.reason, v.message_id) for v in found] == [
        ("reader1@example.org", "feedback", "<m1@example.com>"),
        ("reader2@example.org", "feedback", "<m2@example.com>"),
    ]
