"""The milter's end-of-message parts that need no libmilter: the copy, the evidence, the header."""

from __future__ import annotations

from smtpguard.classify import default_classifier
from smtpguard.classify.verdict import Verdict
from smtpguard.postfix.bounces import MessageCopy, bounce_header, evidence_kind

HARD = Verdict(
    recipient="kijitora@example.net", status="5.1.1", reply_code="550", reason="userunknown",
    bounce="hard", suppress=True, format="rfc3464",
)  # fmt: skip


def test_the_copy_rebuilds_folded_headers_and_the_body_with_crlf() -> None:
    copy = MessageCopy()
    copy.header("Subject", "Undelivered Mail")
    copy.header("Content-Type", 'multipart/report;\n\tboundary="B"')
    copy.body(b"--B\r\n")
    copy.body(b"text\r\n")
    assert copy.data() == (
        b"Subject: Undelivered Mail\r\nContent-Type: multipart/report;\r\n\t"
        b'boundary="B"\r\n\r\n--B\r\ntext\r\n'
    )


def test_a_message_without_body_still_ends_its_header_section() -> None:
    copy = MessageCopy()
    copy.header("Subject", "x")
    assert copy.data() == b"Subject: x\r\n\r\n"


def test_the_copy_stops_at_its_limit() -> None:
    copy = MessageCopy(limit=100)
    copy.header("Subject", "x")
    for _ in range(10):
        copy.body(b"y" * 50)
    assert copy.size == 100
    assert len(copy.data()) == 100


def test_the_copy_is_what_the_classifier_reads() -> None:
    copy = MessageCopy()
    copy.header("From", "MAILER-DAEMON@mx.remote.example")
    copy.header("Subject", "Undelivered Mail Returned to Sender")
    copy.header("Content-Type", 'multipart/report; report-type=delivery-status;\n\tboundary="B"')
    copy.body(
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; kijitora@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--B--\r\n"
    )
    [verdict] = default_classifier().message(copy.data())
    assert (verdict.recipient, verdict.reason, verdict.suppress) == (
        "kijitora@example.net", "userunknown", True,
    )  # fmt: skip


def test_a_bounce_without_a_return_path_check_is_unverified() -> None:
    assert evidence_kind(HARD, ["alice@sender.test"], None) == "dsn-unverified"


def test_a_bounce_to_a_signed_return_path_naming_the_recipient_is_verified() -> None:
    def check(return_path: str, recipient: str) -> bool:
        return return_path == "b+token@bounce.test" and recipient == HARD.recipient

    assert evidence_kind(HARD, ["other@x.test", "b+token@bounce.test"], check) == "dsn-verified"
    assert evidence_kind(HARD, ["alice@sender.test"], check) == "dsn-unverified"


def test_a_feedback_report_is_arf_evidence() -> None:
    report = Verdict(recipient="a@b.example", reason="feedback", bounce="none", format="arf")
    assert evidence_kind(report, [], lambda rp, r: True) == "arf"


def test_the_header_describes_the_verdict() -> None:
    assert bounce_header(HARD, "dsn-unverified", "ignored") == (
        "kijitora@example.net; bounce=hard; reason=userunknown; status=5.1.1;"
        " evidence=dsn-unverified; outcome=ignored"
    )


def test_the_header_keeps_nothing_a_bounce_could_inject() -> None:
    hostile = Verdict(recipient="a@b.example\r\nBcc: evil@x.example " + "z" * 500, reason="x y")
    value = bounce_header(hostile, "dsn-unverified")
    assert "\r" not in value and "\n" not in value and " evil" not in value
    assert value.startswith("a@b.exampleBcc:evil@x.example")
    assert len(value.split("; ")[0]) == 100
