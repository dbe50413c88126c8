"""Inline SMTP replies -> verdicts: the bounce guide's table, reply parsing, the decision policy."""

from __future__ import annotations

import pytest

from smtpguard.classify import Classifier, Failure, default_classifier
from smtpguard.classify.decide import decide, retry_after
from smtpguard.classify.reply import parse_reply


@pytest.fixture
def clf() -> Classifier:
    return Classifier.load()


# ------------------------------------------------------------------ parse_reply


def test_parse_reply_splits_code_status_and_text() -> None:
    assert parse_reply("550 5.1.1 <a@b.example>: User unknown") == (
        "550", "5.1.1", "<a@b.example>: User unknown",
    )  # fmt: skip


def test_parse_reply_joins_multiline_replies_and_drops_repeated_codes() -> None:
    text = (
        "550-5.7.26 This mail has been blocked because\r\n550 5.7.26 the sender is unauthenticated."
    )
    assert parse_reply(text) == (
        "550", "5.7.26", "This mail has been blocked because the sender is unauthenticated.",
    )  # fmt: skip


def test_parse_reply_accepts_a_dsn_diagnostic_type_prefix() -> None:
    assert parse_reply("smtp; 452 4.2.2 Mailbox full") == ("452", "4.2.2", "Mailbox full")


def test_parse_reply_without_code_keeps_a_leading_status() -> None:
    assert parse_reply("5.1.1 User unknown") == ("", "5.1.1", "User unknown")


def test_parse_reply_of_plain_text_returns_only_text() -> None:
    assert parse_reply("Host or domain name not found") == ("", "", "Host or domain name not found")


def test_parse_reply_reply_code_without_text() -> None:
    assert parse_reply("421") == ("421", "", "")


# ------------------------------------------------------------------ the bounce guide's table


def test_550_5_1_1_user_unknown_is_hard_and_suppresses(clf: Classifier) -> None:
    v = clf.reply_line("550 5.1.1 <a@b.example>: User unknown", stage="rcpt")
    assert (v.reason, v.bounce, v.suppress) == ("userunknown", "hard", True)
    assert (v.reply_code, v.status) == ("550", "5.1.1")


def test_554_5_7_1_policy_rejection_is_hard_but_never_suppresses(clf: Classifier) -> None:
    v = clf.reply_line("554 5.7.1 Message rejected by policy", stage="data")
    assert (v.reason, v.bounce, v.suppress) == ("policyviolation", "hard", False)


def test_421_4_3_2_service_not_available_is_soft(clf: Classifier) -> None:
    v = clf.reply_line("421 4.3.2 Service not available, closing transmission channel")
    assert (v.bounce, v.suppress) == ("soft", False)
    assert v.reason == "systemerror"


def test_452_4_2_2_mailbox_full_is_soft(clf: Classifier) -> None:
    v = clf.reply_line("452 4.2.2 Mailbox full", stage="rcpt")
    assert (v.reason, v.bounce, v.suppress) == ("mailboxfull", "soft", False)


def test_451_4_7_1_greylisting_is_soft_and_marked(clf: Classifier) -> None:
    v = clf.reply_line(
        "451 4.7.1 <a@b.example>: Recipient address rejected: Greylisted", stage="rcpt"
    )
    assert (v.bounce, v.suppress) == ("soft", False)
    assert v.extra["greylist"] == "1"


def test_greylisting_reply_reports_the_delay_it_names(clf: Classifier) -> None:
    v = clf.reply_line("451 4.7.1 Please try again in 5 minutes", stage="rcpt")
    assert v.extra == {"greylist": "1", "retry_after": "300"}
    assert v.bounce == "soft"


def test_text_contradicting_its_code_follows_the_text(clf: Classifier) -> None:
    v = clf.reply_line(
        "550 5.1.1 <a@b.example> - 203.0.113.222 has sent to too many recipients this hour",
        stage="rcpt",
    )
    assert v.reason == "ratelimited"
    assert v.suppress is False


def test_unrecognised_reply_is_undefined_and_counted(clf: Classifier) -> None:
    v = clf.reply_line("550 Frobnicated beyond repair")
    assert v.reason == "undefined"
    assert v.rule == ""
    assert clf.stats["undefined"] == 1
    assert clf.stats["reason.undefined"] == 1


# ------------------------------------------------------------------ the decision policy


def test_reply_accepts_an_integer_code_and_text_with_status(clf: Classifier) -> None:
    v = clf.reply(550, "5.1.1 <a@b.example>: User unknown", stage="rcpt", recipient="a@b.example",
                  remote_host="mx.b.example")  # fmt: skip
    assert (v.reply_code, v.status, v.reason, v.suppress) == ("550", "5.1.1", "userunknown", True)
    assert (v.recipient, v.remote_host, v.stage, v.format) == (
        "a@b.example", "mx.b.example", "rcpt", "reply",
    )  # fmt: skip


def test_temporary_user_unknown_is_soft_and_never_suppresses(clf: Classifier) -> None:
    v = clf.reply_line("450 4.1.1 <a@b.example>: Recipient address rejected: unverified address")
    assert v.bounce == "soft"
    assert v.suppress is False


def test_user_unknown_at_mail_from_is_about_the_sender(clf: Classifier) -> None:
    v = clf.reply_line("550 5.1.0 <sender@a.example>... User unknown", stage="mail")
    assert v.reason == "rejected"
    assert v.suppress is False


def test_bare_user_unknown_after_data_is_a_filter_not_a_missing_address(clf: Classifier) -> None:
    v = clf.reply_line("550 User unknown", stage="data")
    assert v.reason == "filtered"
    assert v.suppress is False


def test_bare_user_unknown_at_rcpt_suppresses(clf: Classifier) -> None:
    v = clf.reply_line("550 No such user here", stage="rcpt")
    assert (v.reason, v.bounce, v.suppress) == ("userunknown", "hard", True)


def test_null_mx_domain_permanently_not_accepting_mail_suppresses(clf: Classifier) -> None:
    v = clf.reply_line("556 5.1.10 Recipient address has null MX", stage="rcpt")
    assert (v.reason, v.bounce, v.suppress) == ("notaccept", "hard", True)


def test_blocklisted_sender_is_hard_but_never_suppresses(clf: Classifier) -> None:
    v = clf.reply_line(
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    )
    assert (v.reason, v.bounce, v.suppress) == ("blocked", "hard", False)


def test_dmarc_rejection_is_authfailure(clf: Classifier) -> None:
    v = clf.reply_line(
        "550 5.7.26 Unauthenticated email from a.example is not accepted due to "
        "domain's DMARC policy"
    )
    assert v.reason == "authfailure"


def test_status_table_decides_when_no_wording_matches(clf: Classifier) -> None:
    v = clf.reply_line("550 5.1.2 xyzzy", stage="rcpt")
    assert (v.reason, v.rule) == ("hostunknown", "status:5.1.2")


def test_reply_code_table_is_the_last_resort(clf: Classifier) -> None:
    v = clf.reply_line("552 xyzzy")
    assert (v.reason, v.rule) == ("mailboxfull", "reply_code:552")


def test_positive_reply_is_not_a_bounce(clf: Classifier) -> None:
    v = clf.reply_line("250 2.1.5 Ok")
    assert (v.reason, v.bounce, v.suppress) == ("delivered", "none", False)


def test_inline_reply_without_status_gets_no_pseudo_status(clf: Classifier) -> None:
    v = clf.reply_line("550 No such user here", stage="rcpt")
    assert v.status == ""


def test_bounce_without_status_gets_sisimai_pseudo_status() -> None:
    v = decide(Failure(recipient="a@b.example", diagnostic="No such user", stage="rcpt"),
               default_classifier().rules)  # fmt: skip
    assert (v.status, v.extra["status_source"]) == ("5.0.911", "pseudo")


@pytest.mark.parametrize("hint", ["feedback", "vacation", "delivered"])
def test_structural_non_bounces_never_bounce_or_suppress(hint: str) -> None:
    f = Failure(recipient="a@b.example", reason_hint=hint, diagnostic="550 5.1.1 user unknown")
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.bounce, v.suppress) == (hint, "none", False)


def test_structural_expired_hint_beats_wording() -> None:
    f = Failure(recipient="a@b.example", reason_hint="expired", status="4.4.7",
                diagnostic="Connection refused", action="failed")  # fmt: skip
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.bounce, v.rule) == ("expired", "soft", "hint:expired")


def test_dsn_action_delayed_is_soft_even_with_a_5xx_text() -> None:
    f = Failure(recipient="a@b.example", action="delayed", diagnostic="550 5.1.1 User unknown")
    v = decide(f, default_classifier().rules)
    assert (v.bounce, v.suppress) == ("soft", False)


def test_dsn_action_relayed_is_not_a_bounce() -> None:
    v = decide(Failure(recipient="a@b.example", action="relayed", status="2.0.0"),
               default_classifier().rules)  # fmt: skip
    assert (v.reason, v.bounce) == ("delivered", "none")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("greylisted, retry in 300 seconds", 300), ("try again in 5 minutes", 300),
     ("come back in 1 hour", 3600), ("greylisted", None)],
)  # fmt: skip
def test_retry_after_reads_the_named_delay(text: str, seconds: int | None) -> None:
    assert retry_after(text) == seconds


def test_unexplained_refusal_at_connect_is_about_the_client(clf: Classifier) -> None:
    v = clf.reply_line("554 Rejected", stage="connect")
    assert (v.reason, v.suppress) == ("blocked", False)


def test_null_mx_wording_naming_the_sender_is_not_notaccept(clf: Classifier) -> None:
    v = clf.reply_line("554 5.7.1 This server is not accepting mail from your IP", stage="rcpt")
    assert v.suppress is False


def test_postfix_access_table_rejection_is_not_microsoft_dbeb(clf: Classifier) -> None:
    v = clf.reply_line("554 5.7.1 <a@b.example>: Recipient address rejected: Access denied")
    assert v.suppress is False
    dbeb = clf.reply_line("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)")
    assert (dbeb.reason, dbeb.suppress) == ("userunknown", True)


def test_unexplained_bounce_is_onhold_and_counted_as_undefined(clf: Classifier) -> None:
    v = clf.decide(Failure(recipient="a@b.example", diagnostic="Frobnicated beyond repair"))
    assert (v.reason, v.rule, v.bounce) == ("onhold", "fallback:onhold", "hard")
    assert clf.stats["undefined"] == 1


def test_unexplained_delay_notice_is_expired_and_soft(clf: Classifier) -> None:
    v = clf.decide(Failure(recipient="a@b.example", action="delayed", diagnostic="Frobnicated"))
    assert (v.reason, v.rule, v.bounce, v.suppress) == (
        "expired",
        "fallback:delayed",
        "soft",
        False,
    )


@pytest.mark.parametrize(
    ("stage", "line", "reason", "suppress"),
    [
        ("rcpt", "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
                 "550 5.1.1 Please try double-checking the address", "userunknown", True),
        ("rcpt", "550 5.2.1 The email account that you tried to reach is disabled.", "suspend",
         False),
        ("rcpt", "452 4.2.2 The email account that you tried to reach is over quota.",
         "mailboxfull", False),
        ("rcpt", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address "
                 "lookup", "userunknown", True),
        ("rcpt", "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in virtual "
                 "mailbox table", "userunknown", True),
        ("rcpt", "511 sorry, no mailbox here by that name (#5.1.1 - chkuser)", "userunknown", True),
        ("rcpt", "554 5.7.1 <a@b.example>: Relay access denied", "norelaying", False),
        ("rcpt", "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
         "norelaying", False),
        ("rcpt", "450 4.1.8 <s@bad.example>: Sender address rejected: Domain not found", "rejected",
         False),
        ("rcpt", "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
         "requireptr", False),
        ("connect", "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus",
         "blocked", False),
        ("rcpt", "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact "
                 "your Internet service provider", "blocked", False),
        ("rcpt", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
                 "volume or user complaints", "badreputation", False),
        ("data", "550 5.7.509 Access denied, sending domain a.example does not pass DMARC "
                 "verification", "authfailure", False),
        ("data", "552 5.3.4 Message size exceeds fixed limit", "emailtoolarge", False),
        ("data", "554 5.7.1 Message rejected as spam by Content Filtering.", "spamdetected", False),
        ("data", "550 5.7.1 Virus Detected; Content Rejected", "virusdetected", False),
        ("rcpt", "421 Too many concurrent SMTP connections; please try again later.", "ratelimited",
         False),
        ("rcpt", "452 4.4.5 Insufficient disk space; try again later", "systemfull", False),
        ("rcpt", "550 5.1.6 recipient no longer on server: a@b.example", "hasmoved", True),
    ],
)  # fmt: skip
def test_common_provider_replies(
    clf: Classifier, stage: str, line: str, reason: str, suppress: bool
) -> None:
    v = clf.reply_line(line, stage=stage)
    assert (v.reason, v.suppress) == (reason, suppress)


def test_failed_action_is_never_delivered_even_with_a_2xx_text() -> None:
    f = Failure(recipient="a@b.example", action="failed", diagnostic="250 2.0.0 Ok: queued")
    v = decide(f, default_classifier().rules)
    assert v.bounce == "hard"
    assert v.reason != "delivered"


# ------------------------------------------------------------------ when "user unknown" is believed


def _returned(**fields: str) -> Failure:
    return Failure(recipient="a@b.example", action="failed", **fields)  # type: ignore[arg-type]


def test_recipient_not_found_with_no_stage_is_filtered() -> None:
    # Sisimai's stage rule: nothing shows the reply answered RCPT TO and no 5.1.x backs
    # it, so it may be a recipient-side filter after DATA - never suppressed.
    v = decide(_returned(diagnostic="Recipient Not Found"), default_classifier().rules)
    assert (v.reason, v.status, v.suppress) == ("filtered", "5.0.910", False)


def test_recipient_not_found_known_to_answer_data_is_filtered() -> None:
    v = decide(
        _returned(diagnostic="Recipient Not Found", stage="data"), default_classifier().rules
    )
    assert (v.reason, v.status, v.suppress) == ("filtered", "5.0.910", False)


def test_gmail_wording_relayed_by_an_unknown_host_with_no_stage_is_filtered() -> None:
    f = _returned(
        status="5.0.0", diagnostic="The email account that you tried to reach does not exist."
    )
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.suppress) == ("filtered", False)


def test_user_unknown_with_no_stage_backed_by_a_5_1_1_status_suppresses() -> None:
    v = decide(_returned(status="5.1.1", diagnostic="User unknown"), default_classifier().rules)
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_recipient_not_found_at_rcpt_suppresses() -> None:
    v = decide(
        _returned(diagnostic="550 Recipient not found", stage="rcpt"), default_classifier().rules
    )
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_addressing_status_with_a_vendor_detail_confirms_user_unknown() -> None:
    f = _returned(
        status="5.1.351", diagnostic="550 5.1.351 Remote server returned unknown recipient"
    )
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_recipient_server_directory_lookup_is_userunknown_at_any_stage() -> None:
    f = _returned(diagnostic="User some.name (a@b.example) not listed in Domino Directory")
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.status, v.suppress) == ("userunknown", "5.0.911", True)


def test_explanation_naming_a_disabled_account_beats_a_generic_user_unknown() -> None:
    f = _returned(status="5.0.0", stage="rcpt", diagnostic="550 user unknown",
                  explanation="The user(s) account is disabled.")  # fmt: skip
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.bounce, v.suppress) == ("suspend", "hard", False)
    assert v.rule.endswith(":explanation")


def test_explanation_without_a_mailbox_state_leaves_user_unknown_alone() -> None:
    f = _returned(status="5.1.1", stage="rcpt", diagnostic="550 5.1.1 user unknown",
                  explanation="I'm sorry to have to inform you that your message could not be "
                  "delivered to one or more recipients.")  # fmt: skip
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.suppress) == ("userunknown", True)


def test_x_unix_diagnostic_is_the_local_mailer_not_the_remote_system() -> None:
    f = _returned(status="4.3.0", diagnostic="temporary failure", diagnostic_type="x-unix")
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.bounce) == ("mailererror", "soft")


def test_x_unix_diagnostic_naming_a_full_mailbox_stays_mailboxfull() -> None:
    text = "Quota exceeded message delivery failed to /var/mail/a"
    f = _returned(status="4.3.0", diagnostic=text, diagnostic_type="x-unix")
    v = decide(f, default_classifier().rules)
    assert v.reason == "mailboxfull"


def test_expired_hint_yields_to_a_specific_status_naming_the_cause() -> None:
    f = _returned(reason_hint="expired", status="5.4.312",
                  diagnostic="550 5.4.312 Message expired, DNS query failed")  # fmt: skip
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.rule) == ("networkerror", "status:5.4.312")


def test_expired_hint_is_never_turned_into_a_suppression_by_the_status() -> None:
    f = _returned(reason_hint="expired", status="5.1.1", diagnostic="retry timeout exceeded")
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.suppress) == ("expired", False)


def test_x_unix_no_such_user_confirmed_by_5_1_1_is_userunknown() -> None:
    f = _returned(status="5.1.1", diagnostic="user unknown", diagnostic_type="x-unix")
    v = decide(f, default_classifier().rules)
    assert (v.reason, v.suppress) == ("userunknown", True)
