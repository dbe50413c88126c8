"""Bounce message formats: real returned messages from the corpus -> per-recipient verdicts.

One test per format family the classifier reads (RFC 3464 DSNs, ARF, auto-replies, and
the non-standard reports of Exim, qmail, Postfix, Sendmail, Exchange, Gmail, Yahoo,
Amazon SES, ...), each on a real sample from ``tests/corpus/sisimai-dev/`` with the
recipient, status and reason Sisimai's curated labels expect.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from smtpguard.classify import Classifier, Verdict
from smtpguard.classify.message import extract


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


def verdicts(classifier: Classifier, corpus: Path, name: str) -> list[Verdict]:
    return classifier.message((corpus / name).read_bytes())


def only(classifier: Classifier, corpus: Path, name: str) -> Verdict:
    found = verdicts(classifier, corpus, name)
    assert len(found) == 1, [v.recipient for v in found]
    return found[0]


# (format family, corpus file, recipient, status, reason): one real sample per family.
FAMILIES = [
    ("rfc3464-postfix", "lhost-postfix-16.eml", "kijitora@example.go.jp", "5.1.6", "hasmoved"),
    ("rfc3464-sendmail", "lhost-sendmail-01.eml", "userunknown@bouncehammer.jp", "5.1.1",
     "userunknown"),
    ("rfc3464-exchange2007", "lhost-exchange2007-06.eml", "transports@agglo-saumur.fr", "5.1.1",
     "userunknown"),
    ("rfc3464-office365", "lhost-office365-03.eml", "kijitora@example.com", "5.1.0",
     "authfailure"),
    ("rfc3464-outlook", "lhost-outlook-01.eml", "kijitora@example.jp", "5.2.2", "mailboxfull"),
    ("rfc3464-amazonses", "lhost-amazonses-18.eml", "kijitora@neko.nyaan.example.edu", "5.4.4",
     "hostunknown"),
    ("rfc3464-courier", "lhost-courier-01.eml", "kijitora@example.co.jp", "5.1.1",
     "userunknown"),
    ("rfc3464-gmail-rhost", "rhost-google-01.eml", "shironeko@example.ne.jp", "5.2.1",
     "suspend"),
    ("exim-plain-text", "lhost-exim-01.eml", "kijitora@example.ed.jp", "5.7.0", "blocked"),
    ("qmail-plain-text", "lhost-qmail-01.eml", "kijitora@example.ne.jp", "5.5.0", "userunknown"),
    ("postfix-session-transcript", "lhost-postfix-75.eml", "kijitora@libsisimai.net", "4.3.0",
     "systemerror"),
    ("sendmail-v5-transcript", "lhost-v5sendmail-02.eml", "kijitora@neko.example.org",
     "5.0.912", "hostunknown"),
    ("exchange2003-plain-text", "lhost-exchange2003-01.eml", "kijitora@example.jp", "5.0.911",
     "userunknown"),
    ("gmail-plain-text", "lhost-gmail-04.eml", "kijitora@example.com", "5.7.1", "blocked"),
    ("yahoo-plain-text", "lhost-yahoo-01.eml", "kijitora@example.org", "5.1.1", "userunknown"),
    ("mailru-exim-like", "lhost-mailru-01.eml", "kijitora@example.jp", "5.1.1", "userunknown"),
    ("gmx", "lhost-gmx-01.eml", "shironeko@example.jp", "5.2.2", "mailboxfull"),
    ("dragonfly", "lhost-dragonfly-02.eml", "pseudo-local-part@outlook.example.com", "5.7.509",
     "authfailure"),
    ("opensmtpd", "lhost-opensmtpd-03.eml", "kijitora@neko.example.jp", "5.0.912",
     "hostunknown"),
    ("domino", "lhost-domino-01.eml", "kijitora@example.jp", "5.0.911", "userunknown"),
    ("notes", "lhost-notes-03.eml", "kijitora@example.com", "5.0.911", "userunknown"),
    ("kddi", "lhost-kddi-02.eml", "kijitora@00000000000000.dion.ne.jp", "5.0.922",
     "mailboxfull"),
    ("imailserver", "lhost-imailserver-02.eml", "kijitora@example.co.jp", "5.0.922",
     "mailboxfull"),
    ("mimecast", "lhost-mimecast-01.eml", "sabineko@neko.ef.example.org", "5.4.1",
     "userunknown"),
    ("zoho", "lhost-zoho-01.eml", "kijitora@example.co.jp", "5.1.1", "userunknown"),
    ("x3-bulleted", "lhost-x3-01.eml", "kijitora@example.com", "5.3.0", "userunknown"),
    ("x6-sentence", "lhost-x6-02.eml", "kijitora@libsisimai.org", "5.1.1", "userunknown"),
    ("verizon-broken-mime", "lhost-verizon-02.eml", "may-be-straycat-nyaaaaaan@vtext.com",
     "5.0.911", "userunknown"),
    ("amazonses-json", "lhost-amazonses-10.eml", "bounce@simulator.amazonses.com", "5.1.1",
     "userunknown"),
    ("google-groups", "lhost-googlegroups-02.eml", "libsisimai@googlegroups.com", "5.0.918",
     "rejected"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "recipient", "status", "reason"),
    [f[1:] for f in FAMILIES],
    ids=[f[0] for f in FAMILIES],
)
def test_format_family_gives_recipient_status_and_reason(
    classifier: Classifier, corpus: Path, name: str, recipient: str, status: str, reason: str
) -> None:
    v = only(classifier, corpus, name)
    assert (v.recipient, v.status, v.reason) == (recipient, status, reason)


def test_dsn_with_two_recipients_gives_one_verdict_each(
    classifier: Classifier, corpus: Path
) -> None:
    found = verdicts(classifier, corpus, "lhost-postfix-13.eml")
    assert [(v.recipient, v.status, v.reason) for v in found] == [
        ("kijitora@example.jp", "5.2.1", "userunknown"),
        ("noraneko@example.jp", "5.2.2", "mailboxfull"),
    ]


def test_dsn_blocks_run_together_without_blank_lines_are_split(
    classifier: Classifier, corpus: Path
) -> None:
    # AOL omits the blank line between per-recipient blocks (RFC 3464 §2.1 wants one).
    found = verdicts(classifier, corpus, "rhost-aol-03.eml")
    assert [(v.recipient, v.reason) for v in found] == [
        ("sabineko@example.jp", "mailboxfull"),
        ("mikeneko@example.jp", "userunknown"),
    ]


def test_exim_report_lists_every_failed_address(classifier: Classifier, corpus: Path) -> None:
    found = verdicts(classifier, corpus, "lhost-exim-02.eml")
    assert {v.recipient for v in found} == {"kijitora@example.jp", "sabatora@example.jp"}
    assert all(v.stage == "rcpt" for v in found)


def test_sendmail_transcript_names_the_stage_of_the_failure(
    classifier: Classifier, corpus: Path
) -> None:
    # ">>> DATA" then "<<< 550 ... User unknown": an unknown user refused after DATA.
    v = only(classifier, corpus, "lhost-sendmail-27.eml")
    assert (v.stage, v.reason, v.suppress) == ("data", "filtered", False)


def test_mta_saying_the_domain_does_not_resolve_is_hostunknown(
    classifier: Classifier, corpus: Path
) -> None:
    v = only(classifier, corpus, "lhost-qmail-13.eml")
    assert (v.recipient, v.reason, v.bounce, v.suppress) == (
        "nekochan@cx.libsisimai.com",
        "hostunknown",
        "hard",
        True,
    )


def test_arf_feedback_report_is_feedback_not_a_bounce(classifier: Classifier, corpus: Path) -> None:
    v = only(classifier, corpus, "arf-02.eml")
    assert (v.recipient, v.reason, v.feedback_type) == (
        "this-local-part-does-not-exist-on-yahoo@yahoo.com",
        "feedback",
        "abuse",
    )
    assert (v.bounce, v.suppress) == ("none", False)


def test_hotmail_jmrp_complaint_is_feedback(classifier: Classifier, corpus: Path) -> None:
    v = only(classifier, corpus, "arf-22.eml")
    assert (v.recipient, v.reason, v.bounce) == ("kijitora@example.com", "feedback", "none")


def test_apple_mail_unsubscribe_is_opt_out_feedback(classifier: Classifier, corpus: Path) -> None:
    v = only(classifier, corpus, "arf-26.eml")
    assert (v.recipient, v.reason, v.feedback_type) == ("example@icloud.com", "feedback", "opt-out")


def test_amazon_ses_complaint_notification_is_feedback(classifier: Classifier) -> None:
    body = (
        '{"notificationType":"Complaint","complaint":{"complaintFeedbackType":"abuse",'
        '"complainedRecipients":[{"emailAddress":"reader@example.org"}]},'
        '"mail":{"messageId":"0100-abc","source":"news@example.com"}}'
    )
    raw = (
        "From: no-reply@sns.amazonaws.com\r\nTo: ops@example.com\r\n"
        "Subject: AWS Notification Message\r\n\r\n" + body + "\r\n"
    ).encode()
    (v,) = classifier.message(raw)
    assert (v.recipient, v.reason, v.feedback_type, v.message_id) == (
        "reader@example.org",
        "feedback",
        "abuse",
        "0100-abc",
    )


def test_vacation_auto_reply_is_vacation_from_the_replier(
    classifier: Classifier, corpus: Path
) -> None:
    v = only(classifier, corpus, "rfc3834-01.eml")
    assert (v.recipient, v.reason, v.bounce, v.suppress) == (
        "kijitora@example.net",
        "vacation",
        "none",
        False,
    )


def test_out_of_office_subject_without_headers_is_vacation(classifier: Classifier) -> None:
    raw = (
        b"From: Erika Muster <erika@example.de>\r\nTo: news@example.com\r\n"
        b"Subject: Abwesenheitsnotiz: Newsletter\r\n\r\n"
        b"Ich bin bis zum 5. Mai nicht im Buero.\r\n"
    )
    (v,) = classifier.message(raw)
    assert (v.recipient, v.reason, v.bounce) == ("erika@example.de", "vacation", "none")


def test_bounce_marked_auto_submitted_is_still_a_bounce(
    classifier: Classifier, corpus: Path
) -> None:
    # Exim marks its bounces "Auto-Submitted: auto-replied" (RFC 3834 §5) too.
    v = only(classifier, corpus, "lhost-exim-01.eml")
    assert v.reason != "vacation"
    assert v.format == "plaintext"


def test_positive_dsn_is_delivered_and_bounce_none(classifier: Classifier, corpus: Path) -> None:
    v = verdicts(classifier, corpus, "rfc3464-28.eml")[0]
    assert (v.recipient, v.status, v.reason, v.bounce, v.suppress) == (
        "kijitora@neko.example.jp",
        "2.1.5",
        "delivered",
        "none",
        False,
    )


def test_ordinary_mail_is_not_a_bounce() -> None:
    raw = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\n"
        b"Subject: Lunch tomorrow?\r\nMessage-ID: <1@example.org>\r\n\r\n"
        b"Hi Bob, are you free at noon? Write to carol@example.net too.\r\n"
    )
    assert extract(raw) == []


def test_bounce_carries_what_identifies_the_original_send(
    classifier: Classifier, corpus: Path
) -> None:
    v = only(classifier, corpus, "lhost-amavis-01.eml")
    assert v.message_id == "<Qdmail.0.0.0e_8ed60e1eb3e559f02254e3437c3110b1@example.net>"
    assert v.envelope_sender == "kijitora@example.co.jp"


def test_verp_token_is_read_from_the_envelope_sender() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+ab12cd@news.example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n\r\n"
        b"<gone@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1 <gone@example.net>:"
        b" Recipient address rejected: User unknown (in reply to RCPT TO command)\r\n"
    )
    (f,) = extract(raw)
    assert (f.recipient, f.status, f.reply_code, f.stage) == ("gone@example.net", "5.1.1", "550",
                                                              "rcpt")  # fmt: skip
    assert (f.envelope_sender, f.return_path_token) == ("bounces+ab12cd@news.example.com", "ab12cd")


EXIM_TWO_RECIPIENTS = b"""From: Mail Delivery System <Mailer-Daemon@mx.example.com>
To: sender@example.com
Subject: Mail delivery failed: returning message to sender

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  bob@badmx.example
    all relevant MX records point to non-existent hosts
  carol@example.org
    SMTP error from remote mail server after RCPT TO:<carol@example.org>:
    host mx.example.org [192.0.2.7]: 552 5.2.2 Mailbox full
""".replace(b"\n", b"\r\n")


def test_each_recipient_keeps_its_own_reason_in_a_multi_recipient_report(
    classifier: Classifier,
) -> None:
    found = {v.recipient: v for v in classifier.message(EXIM_TWO_RECIPIENTS)}
    assert (found["bob@badmx.example"].reason, found["bob@badmx.example"].status) == (
        "hostunknown",
        "5.0.912",
    )
    assert (found["carol@example.org"].reason, found["carol@example.org"].stage) == (
        "mailboxfull",
        "rcpt",
    )
    assert found["carol@example.org"].suppress is False


SENDMAIL_TWO_HOSTS = b"""From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>
To: sender@example.com
Subject: Returned mail: see transcript for details

   ----- The following addresses had permanent fatal errors -----
<u1@example.net>
    (reason: 550 5.1.1 <u1@example.net>... User unknown)
<u2@example.org>
    (reason: 552 5.2.2 Over quota)

   ----- Transcript of session follows -----
... while talking to mx.example.net.:
>>> RCPT To:<u1@example.net>
<<< 550 5.1.1 <u1@example.net>... User unknown
550 5.1.1 <u1@example.net>... User unknown
... while talking to mx.example.org.:
>>> DATA
<<< 552 5.2.2 Over quota
""".replace(b"\n", b"\r\n")


def test_sendmail_transcript_of_one_host_does_not_leak_into_another_recipient(
    classifier: Classifier,
) -> None:
    found = {v.recipient: v for v in classifier.message(SENDMAIL_TWO_HOSTS)}
    assert (found["u1@example.net"].reason, found["u1@example.net"].stage) == (
        "userunknown",
        "rcpt",
    )
    assert found["u2@example.org"].reason == "mailboxfull"


def test_list_post_mentioning_non_members_is_not_a_bounce() -> None:
    raw = (
        b"From: news@lists.example.org\r\nTo: reader@example.com\r\nSubject: Weekly update\r\n"
        b"List-Id: <news.lists.example.org>\r\n\r\n"
        b"Non-members can join at https://example.org; write to help@example.org.\r\n"
    )
    assert extract(raw) == []


def test_mailing_list_refusing_a_non_member_is_rejected_for_the_list(
    classifier: Classifier, corpus: Path
) -> None:
    v = only(classifier, corpus, "lhost-fml-02.eml")
    assert (v.recipient, v.reason, v.suppress) == ("neko-nyaan@example.org", "rejected", False)


def test_bounce_wrapped_by_a_filter_reads_the_inner_report(
    classifier: Classifier, corpus: Path
) -> None:
    # InterScan says only "Unable to deliver"; the attached Sendmail report has the reply.
    v = only(classifier, corpus, "lhost-trendmicro-03.eml")
    assert (v.recipient, v.reason, v.reply_code) == ("kijitora@example.jp", "userunknown", "550")


def test_hostile_bounce_shapes_finish_fast_without_raising() -> None:
    head = b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail\r\n\r\n"
    hostile = [
        head + b"a@b." * 250_000,  # one 1 MB line of address-like text
        head + b"<a@b.example>:\r\n" * 60_000,  # 60,000 recipient anchors
        head + b">>> RCPT TO:<a@b.example>\r\n" * 30_000 + b"<<< 550 no\r\n",
        b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        + b"".join(
            b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
            for i in range(500)
        ),
    ]
    for raw in hostile:
        start = time.perf_counter()
        found = extract(raw)
        assert time.perf_counter() - start < 1.0
        assert len(found) <= 100


def test_ordinary_mail_with_error_in_the_subject_is_not_a_bounce() -> None:
    raw = (
        b"From: Dana <dana@example.org>\r\nTo: support@example.com\r\n"
        b"Subject: Error when I log in\r\n\r\n"
        b"Hello, I get an error page. Please reply to:\r\n\r\n  dana@example.org\r\n"
    )
    assert extract(raw) == []


def test_no_reply_auto_responder_is_vacation_not_a_bounce(classifier: Classifier) -> None:
    raw = (
        b"From: No Reply <noreply@shop.example>\r\nTo: news@example.com\r\n"
        b"Subject: Re: Your newsletter\r\nAuto-Submitted: auto-replied\r\n\r\n"
        b"Thanks for writing. This mailbox is not monitored; contact help@shop.example.\r\n"
    )
    (v,) = classifier.message(raw)
    assert (v.recipient, v.reason, v.bounce) == ("noreply@shop.example", "vacation", "none")


def test_qmail_wording_names_the_smtp_stage(classifier: Classifier, corpus: Path) -> None:
    # "... does not like recipient." is RCPT; "... failed after I sent the message." is
    # the end of DATA (and a "RCPT: <addr>" summary line does not count as the stage).
    assert only(classifier, corpus, "lhost-qmail-16.eml").stage == "rcpt"
    assert only(classifier, corpus, "lhost-qmail-20.eml").stage == "eom"


def _dsn(explanation: str, blocks: str) -> bytes:
    """A minimal RFC 3464 report: human-readable part, then the delivery-status part."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        "To: sender@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\n{explanation}\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n\r\n{blocks}\r\n--B--\r\n"
    ).encode()


def test_dsn_explanation_naming_a_disabled_account_prevents_suppression(
    classifier: Classifier,
) -> None:
    raw = _dsn(
        "The user(s) account is disabled.\r\n\r\n"
        "<gone@example.net>: 550 user unknown (in reply to RCPT TO command)",
        "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.0.0",
    )
    (v,) = classifier.message(raw)
    assert (v.reason, v.bounce, v.suppress) == ("suspend", "hard", False)


def test_another_recipients_full_mailbox_does_not_speak_for_this_one(
    classifier: Classifier, corpus: Path
) -> None:
    # Postfix: "<kijitora@...>: ... User Unknown (in reply to RCPT TO)", then another
    # recipient's "Mailbox Full": each keeps its own reason.
    found = {v.recipient: v for v in verdicts(classifier, corpus, "lhost-postfix-13.eml")}
    assert (found["kijitora@example.jp"].reason, found["kijitora@example.jp"].suppress) == (
        "userunknown",
        True,
    )
    assert found["noraneko@example.jp"].reason == "mailboxfull"


def test_dsn_with_x_unix_diagnostic_is_a_local_mailer_error(classifier: Classifier) -> None:
    raw = _dsn(
        "Your message could not be delivered.",
        "Final-Recipient: rfc822; u@example.net\r\nAction: failed\r\nStatus: 4.3.0\r\n"
        "Diagnostic-Code: x-unix; temporary failure",
    )
    (v,) = classifier.message(raw)
    assert (v.reason, v.diagnostic) == ("mailererror", "temporary failure")


def test_user_unknown_wording_in_a_dsn_without_stage_is_filtered(
    classifier: Classifier,
) -> None:
    # Nothing says which command the reply answered and no 5.1.x backs it: Sisimai's stage
    # rule makes it a possible recipient-side filter, never a suppression.
    raw = _dsn(
        "Delivery has failed.",
        "Final-Recipient: rfc822; jane@example.net\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        "Diagnostic-Code: The email account that you tried to reach does not exist.",
    )
    (v,) = classifier.message(raw)
    assert (v.reason, v.suppress) == ("filtered", False)


def test_pipelined_sendmail_transcript_reply_answers_rcpt(
    classifier: Classifier, corpus: Path
) -> None:
    # ">>> DATA" then "<<< 550 5.5.0 ... Invalid recipient" and Sendmail's own
    # "550 5.1.1 <addr>... User unknown": the reply answered the pipelined RCPT TO.
    v = only(classifier, corpus, "lhost-sendmail-46.eml")
    assert (v.stage, v.reason, v.suppress) == ("rcpt", "userunknown", True)
