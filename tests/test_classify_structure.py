"""What the STRUCTURE of a bounce proves about "no such user", and what it refutes.

Sisimai's stage rule is the default: "user unknown" that nothing shows to answer RCPT TO and
no 5.1.x status backs may be a recipient-side filter after DATA, so it is ``filtered`` and
never suppresses. The structure can show the mailbox owner itself speaking - the provider
answering about its own accounts, or the reporting MTA delivering locally - and then the
wording stands at any stage. It can also show that a reply is about the SENDER, whatever
the wording. Replies quoted here are the documented texts (providers' SMTP error pages,
MTA manuals) with example addresses; the report shapes are the MTAs' documented layouts.
"""

from __future__ import annotations

import pytest

from smtpguard.classify import Classifier, Failure
from smtpguard.classify.decide import decide


@pytest.fixture
def clf() -> Classifier:
    return Classifier.load()


def _dsn(reporting_mta: str, blocks: str, explanation: str = "Delivery has failed.") -> bytes:
    """A minimal RFC 3464 report from ``reporting_mta``."""
    return (
        f"From: Mail Delivery Subsystem <mailer-daemon@{reporting_mta}>\r\n"
        "To: sender@example.com\r\nSubject: Delivery Status Notification (Failure)\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\n{explanation}\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporting_mta}\r\n\r\n{blocks}\r\n--B--\r\n"
    ).encode()


GMAIL_NO_ACCOUNT = "The email account that you tried to reach does not exist."


# ---------------------------------------------------------- the provider about its own accounts


def test_gmail_reporting_its_own_missing_account_is_userunknown_at_any_stage(
    clf: Classifier,
) -> None:
    # Gmail SMTP errors 550 5.1.1, reported by Google's own MTA (no remote MTA): Google is
    # speaking about its own directory.
    raw = _dsn(
        "googlemail.com",
        "Final-Recipient: rfc822; jane@example.net\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        f"Diagnostic-Code: smtp; {GMAIL_NO_ACCOUNT}",
    )
    (v,) = clf.message(raw)
    assert (v.reason, v.suppress, v.provider) == ("userunknown", True, "google")
    assert v.extra["confirmed_by"] == "provider:google"


def test_gmail_wording_when_only_the_recipient_domain_is_googles_is_filtered(
    clf: Classifier,
) -> None:
    # The mailbox is at gmail.com, but another host reported the failure: someone else may
    # have answered (a filter relaying Google's words), so the stage rule applies.
    raw = _dsn(
        "mx.example.net",
        "Final-Recipient: rfc822; jane@gmail.com\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        f"Diagnostic-Code: smtp; {GMAIL_NO_ACCOUNT}",
    )
    (v,) = clf.message(raw)
    assert (v.provider, v.reason, v.suppress) == ("google", "filtered", False)


def test_gmail_domain_not_found_is_not_a_missing_account(clf: Classifier) -> None:
    # Gmail Help "Fix bounced or rejected emails": the domain of the address couldn't be
    # found - a DNS failure, not Google's directory.
    f = Failure(
        recipient="jane@example.invalid",
        action="failed",
        remote_host="googlemail.com",
        diagnostic="Address not found. Your message wasn't delivered to jane@example.invalid "
        "because the domain example.invalid couldn't be found.",
    )
    v = decide(f, clf.rules)
    assert v.rule != "google.no-such-account"
    assert "confirmed_by" not in v.extra


def test_exchange_directory_lookup_is_userunknown_at_any_stage(clf: Classifier) -> None:
    # Microsoft Learn, "Fix email delivery issues for error code 5.1.10 in Exchange Online":
    # the categorizer's directory lookup found no such recipient. 5.1.10 is also RFC 7505's
    # null-MX status; Exchange's RESOLVER.ADR token says which one this is.
    raw = _dsn(
        "mail.protection.outlook.com",
        "Final-Recipient: rfc822; jane@example.net\r\nAction: failed\r\nStatus: 5.1.10\r\n"
        "Diagnostic-Code: smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not "
        "found by SMTP address lookup",
    )
    (v,) = clf.message(raw)
    assert (v.reason, v.suppress) == ("userunknown", True)


# ---------------------------------------------------------- the reporting MTA's own local delivery

IMAIL_BOUNCE = (
    "From: Postmaster <postmaster@example.org>\r\n"
    "To: <sender@example.com>\r\nSubject: Undeliverable Mail\r\n"
    "X-Mailer: <SMTP32 v8.22>\r\n\r\n"
    "{line}\r\n\r\n\r\nOriginal message follows.\r\n\r\n"
    "From: sender@example.com\r\nTo: jane@example.org\r\nSubject: hello\r\n\r\nhi\r\n"
)


def test_imail_local_unknown_user_is_userunknown(clf: Classifier) -> None:
    # IMail's postmaster returns mail for a local user that does not exist ("Unknown
    # Local User Processing"): its own directory, no remote server involved.
    raw = IMAIL_BOUNCE.format(line="Unknown user: jane@example.org").encode()
    (v,) = clf.message(raw)
    assert (v.recipient, v.reason, v.suppress) == ("jane@example.org", "userunknown", True)
    assert v.extra["confirmed_by"] == "local-delivery:imail"


def test_imail_quoting_a_remote_server_is_not_local_delivery(clf: Classifier) -> None:
    raw = IMAIL_BOUNCE.format(line="jane@example.org: Remote host said: 550 User unknown").encode()
    (v,) = clf.message(raw)
    assert (v.reason, v.suppress) == ("filtered", False)


QMAIL_BOUNCE = (
    "From: MAILER-DAEMON@mx.example.org\r\nTo: sender@example.com\r\n"
    "Subject: failure notice\r\n\r\n"
    "Hi. This is the qmail-send program at mx.example.org.\r\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
    "<jane@example.org>:\r\n{reply}\r\n\r\n"
    "--- Below this line is a copy of the message.\r\n\r\n"
    "From: sender@example.com\r\nTo: jane@example.org\r\n\r\nhi\r\n"
)


def test_qmail_local_delivery_statement_is_confirmed_by_structure(clf: Classifier) -> None:
    # qmail-local(8) wording, without its usual "(#5.1.1)": the structure alone confirms.
    raw = QMAIL_BOUNCE.format(reply="Sorry, no mailbox here by that name.").encode()
    (v,) = clf.message(raw)
    assert (v.reason, v.suppress) == ("userunknown", True)
    assert v.extra["confirmed_by"] == "local-delivery:qmail"


def test_qmail_remote_reply_without_stage_keeps_the_stage_rule(clf: Classifier) -> None:
    # qmail-remote quoting the remote server: "Remote host said:" - not local delivery.
    raw = QMAIL_BOUNCE.format(
        reply="192.0.2.1 failed after I sent the message.\r\nRemote host said: 550 user unknown"
    ).encode()
    (v,) = clf.message(raw)
    assert (v.stage, v.reason, v.suppress) == ("eom", "filtered", False)


# ------------------------------------------------------------------ replies about the sender


def test_reply_naming_the_senders_domain_is_about_the_sender(clf: Classifier) -> None:
    # Exim "SMTP error from remote mail server after RCPT TO": the remote says the domain
    # that does not exist is the envelope sender's, not the recipient's.
    f = Failure(
        recipient="jane@example.net",
        envelope_sender="bob@sender.example.com",
        action="failed",
        stage="rcpt",
        diagnostic="host mx.example.net [192.0.2.1] SMTP error from remote mail server "
        "after RCPT TO:<jane@example.net>: 553 sender.example.com does not exist",
    )
    v = decide(f, clf.rules)
    assert (v.reason, v.suppress) == ("rejected", False)


def test_reply_naming_the_recipients_domain_is_not_about_the_sender(clf: Classifier) -> None:
    f = Failure(
        recipient="jane@example.net",
        envelope_sender="bob@sender.example.com",
        action="failed",
        stage="rcpt",
        diagnostic="553 5.1.2 example.net does not exist",
    )
    v = decide(f, clf.rules)
    assert v.reason != "rejected"


def test_unroutable_sender_address_is_rejected_at_any_stage(clf: Classifier) -> None:
    # Exim verify=sender: "550 Unroutable sender address" - here after RCPT TO.
    v = clf.reply_line("550 Unroutable sender address", stage="rcpt", recipient="a@example.org")
    assert (v.reason, v.suppress) == ("rejected", False)


def test_sender_verification_unrouteable_address_is_not_the_recipients_domain(
    clf: Classifier,
) -> None:
    # Exim ACL verify=sender failing: "Unrouteable address" is about the SENDER here; the
    # structural hostunknown hint must not condemn the recipient.
    f = Failure(
        recipient="jane@example.net",
        action="failed",
        stage="rcpt",
        reason_hint="hostunknown",
        diagnostic="550-Verification failed for <bob@sender.example.com> 550-Unrouteable "
        "address 550 Sender verify failed",
    )
    v = decide(f, clf.rules)
    assert (v.reason, v.suppress) == ("rejected", False)


def test_host_unknown_naming_another_domain_does_not_suppress(clf: Classifier) -> None:
    # Sendmail op.me "Host unknown (Name server: host: host not found)", naming a host in a
    # domain unrelated to the recipient's.
    v = clf.reply_line(
        "550 5.1.2 Host unknown (Name server: mx.unrelated.example: host not found)",
        stage="rcpt",
        recipient="jane@example.net",
    )
    assert (v.reason, v.suppress) == ("hostunknown", False)


def test_host_unknown_naming_the_recipients_own_mx_suppresses(clf: Classifier) -> None:
    v = clf.reply_line(
        "550 5.1.2 Host unknown (Name server: mx.example.net: host not found)",
        stage="rcpt",
        recipient="jane@example.net",
    )
    assert (v.reason, v.suppress) == ("hostunknown", True)


# ------------------------------------------------------------------ recipients and retries


def test_role_address_the_original_was_sent_to_is_a_recipient(clf: Classifier) -> None:
    # A message sent TO postmaster@ bounces like any other: the returned headers show it
    # was the addressee (role addresses are otherwise never taken for recipients).
    raw = (
        b"From: MAILER-DAEMON <>\r\nTo: bob@sender.example.com\r\n"
        b"Subject: Mail delivery failed\r\n\r\n"
        b"There was an error delivering your mail to <postmaster@gone.example>.\r\n\r\n"
        b"DNS lookup failure: host gone.example not found\r\n\r\n"
        b"Message headers follow.\r\n\r\n"
        b"From: <bob@sender.example.com>\r\nTo: <postmaster@gone.example>\r\nSubject: hi\r\n"
    )
    (v,) = clf.message(raw)
    assert (v.recipient, v.reason, v.suppress) == ("postmaster@gone.example", "hostunknown", True)


def test_contact_postmaster_is_still_not_a_recipient(clf: Classifier) -> None:
    raw = (
        b"From: MAILER-DAEMON <>\r\nTo: bob@sender.example.com\r\n"
        b"Subject: Mail delivery failed\r\n\r\n"
        b"Delivery failed. Contact <postmaster@sender.example.com> for help.\r\n\r\n"
        b"Message headers follow.\r\n\r\n"
        b"From: <bob@sender.example.com>\r\nTo: <jane@example.net>\r\nSubject: hi\r\n"
    )
    assert [v.recipient for v in clf.message(raw)] == ["jane@example.net"]


def test_final_report_with_only_a_transient_reply_is_expired(clf: Classifier) -> None:
    # RFC 5321 4.2.1: 4yz is transient. A permanent-failure report whose only evidence is a
    # 421 says the MTA retried until it gave up.
    raw = (
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
        b"To: bob@example.com\r\nSubject: Mail delivery failed\r\n\r\n"
        b"A message that you sent could not be delivered to one or more of its recipients. "
        b"This is a permanent error.\r\n\r\n"
        b"jane@example.net: 421 service not reachable\r\n"
    )
    (v,) = clf.message(raw)
    assert (v.reason, v.bounce, v.suppress) == ("expired", "soft", False)


def test_a_block_list_tag_with_the_client_ip_is_blocked(clf: Classifier) -> None:
    # Plesk KB "error 554 host refused to talk to me": "554 IP=IP_ADDRESS - A problem
    # occurred. (Ask your postmaster for help or to contact ... to clarify.) (BL)".
    v = clf.reply_line(
        "554 IP=192.0.2.1 - A problem occurred. (Ask your postmaster for help or to contact "
        "abuse@example.net to clarify.) (BL)",
        stage="connect",
    )
    assert (v.reason, v.suppress) == ("blocked", False)
