"""The milter's end-of-message parts: the copy, the evidence (the intake's), the header.

What a returned message proves is decided by the intake's judgement
(:func:`smtpguard.intake.returned.judge`); here the milter's own ``record`` is
driven with a real verdict sink on a real SQLite store, without libmilter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpguard.classify import default_classifier
from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.intake.verp import SignedVerpCodec
from smtpguard.policy import open_recipient_policy, open_sink
from smtpguard.postfix.background import BackgroundLoop
from smtpguard.postfix.bounces import MessageCopy, bounce_header
from smtpguard.store.sent import SentLookup
from smtpguard.store.writer import open_thread
from tests.test_intake_feed import dsn_to

DOMAIN = "bounce.example.org"
SECRET = "a milter test key of 32 bytes..."
CORPUS = Path(__file__).parent / "corpus" / "sisimai-dev"

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


# --------------------------------------------------------------------------- the evidence


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make_app(bounce_domain=True)``: the milter's shared part over a real store."""
    from smtpguard.postfix.milter_app import MilterApp

    closers: list[Callable[[], None]] = []

    def make(*, bounce_domain: bool = True) -> MilterApp:
        intake = {"bounce_domain": DOMAIN, "secret": SECRET} if bounce_domain else {}
        cfg = Config().with_overrides(store={"data_dir": str(tmp_path / "var")}, intake=intake)
        loop = BackgroundLoop("test-sink")
        writer = loop.run(
            open_thread(cfg.data_dir, busy_timeout=5, transactional=True, name="writer"), 30
        )
        sink = loop.run(open_sink(cfg, writer=writer), 30)
        policy, sent = open_recipient_policy(cfg), SentLookup.open(cfg.data_dir)
        closers.extend([policy.close, sent.close, loop.stop, writer.close])
        return MilterApp(
            cfg, policy, sink, loop, default_classifier(), sent=sent, writer=writer,
            codec=SignedVerpCodec.from_config(cfg.intake),
        )  # fmt: skip

    yield make
    for close in reversed(closers):
        close()


def test_a_bounce_without_a_bounce_domain_is_unverified(make_app: Callable[..., Any]) -> None:
    app = make_app(bounce_domain=False)
    [(verdict, kind, outcome)] = app.record(dsn_to("", HARD.recipient), ["alice@sender.test"], "Q1")
    assert (verdict.recipient, kind, outcome) == (HARD.recipient, "dsn-unverified", "recorded")


def test_a_bounce_to_a_signed_return_path_naming_the_recipient_is_verified(
    make_app: Callable[..., Any],
) -> None:
    app = make_app()
    return_path = app.sign("Q1", "alice@sender.test", HARD.recipient)
    data = dsn_to(return_path, HARD.recipient)
    [(_, kind, outcome)] = app.record(data, ["other@x.test", return_path], "Q2")
    assert (kind, outcome) == ("dsn-verified", "suppressed")
    [(_, kind, outcome)] = app.record(
        dsn_to(return_path, "someone@example.net"), [return_path], "Q3"
    )
    assert (kind, outcome) == ("dsn-unverified", "recorded")  # not the token's recipient
    [(_, kind, _)] = app.record(data, ["alice@sender.test"], "Q4")
    assert kind == "dsn-unverified"  # not returned to a signed return path


def test_a_feedback_report_is_arf_evidence_only_when_tied_to_our_send(
    make_app: Callable[..., Any],
) -> None:
    app = make_app()
    report = (CORPUS / "arf-02.eml").read_bytes()
    [(verdict, kind, _)] = app.record(report, ["fbl@sender.test"], "Q1")
    # Anyone can mail an ARF report: one not tied to our send is only recorded.
    assert (verdict.reason, kind) == ("feedback", "arf-unverified")
    return_path = app.sign("Q2", "alice@sender.test", verdict.recipient)
    signed = report.replace(
        b"Return-Path: <shironeko@example.com>", f"Return-Path: <{return_path}>".encode()
    )
    [(verdict, kind, outcome)] = app.record(signed, ["fbl@sender.test"], "Q3")
    assert (kind, outcome) == ("arf", "suppressed")


def test_an_auto_reply_records_nothing(make_app: Callable[..., Any]) -> None:
    app = make_app()
    assert app.record((CORPUS / "rfc3834-01.eml").read_bytes(), ["a@sender.test"], "Q1") == []


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
