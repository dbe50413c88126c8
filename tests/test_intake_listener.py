"""Returned mail over SMTP to the relay's bounce address: only a signed return path condemns.

A real relay process sends through a test MX (which sees the signed return path), then
DSNs - from the corpus, and ones the relay itself builds - come back over SMTP to the
intake listener. What ends on the suppression list is read from the real database.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest

from smtpguard.intake.verp import SignedVerpCodec
from smtpguard.relay.dsn import DsnRecipient, build_dsn
from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.net import free_port
from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY

pytestmark = pytest.mark.slow

DOMAIN = "bounce.example.net"
KEY = b"0123456789abcdef0123456789abcdef"
CORPUS = Path(__file__).parent / "corpus" / "sisimai-dev"


@pytest.fixture
def relay(start_relay: Any, dns_server: Any, tmp_path: Path) -> Any:
    route_to_mx(dns_server, "example.com", "example.co.jp", "example.net", "yahoo.com")
    key = tmp_path / "verp.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    port = free_port()
    proc = start_relay(
        intake={"bounce_domain": DOMAIN, "secret_file": str(key), "listen": f"127.0.0.1:{port}",
                "rate_limit": 20},
    )  # fmt: skip
    proc.intake_port = port
    return proc


def sent_return_path(relay: Any, test_mx: Any, recipient: str) -> str:
    """Send through the relay; the envelope sender the MX saw."""
    relay.send("sender@example.org", [recipient], BODY)
    (msg,) = test_mx.wait_for(1)
    return msg.mail_from


def returned(relay: Any, rcpt: str, data: bytes, mail_from: str = "") -> tuple[int, bytes]:
    with smtplib.SMTP(
        "127.0.0.1", relay.intake_port, local_hostname="mx.remote.test", timeout=30
    ) as s:
        s.ehlo()
        code, text = s.mail(mail_from)
        assert code == 250, text
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text
        return s.data(data)


def relay_dsn(recipient: str, status: str, diagnostic: str, return_path: str) -> bytes:
    """A DSN as smtpguard's own relay writes it, sent back to ``return_path``."""
    original = f"From: sender@example.org\r\nTo: {recipient}\r\nSubject: hi\r\n\r\nhi\r\n"
    report = DsnRecipient(
        address=recipient,
        orcpt="",
        action="failed" if status[0] == "5" else "delayed",
        status=status,
        diagnostic=diagnostic,
        remote_mta="mx.example.com",
        last_attempt=0,
    )
    return build_dsn(
        original=original.encode(),
        mail_from=return_path,
        envid="",
        ret="HDRS",
        recipients=[report],
        reporting_mta="mx.example.com",
        arrival_date=0,
    )


def entry(relay: Any, address: str) -> Any:
    with SuppressionStore.open(relay.data_dir) as store:
        return store.lookup(address)


def history(relay: Any, address: str) -> list[Any]:
    with SuppressionStore.open(relay.data_dir) as store:
        return store.history(address)


def test_relay_sends_with_a_signed_return_path(relay: Any, test_mx: Any) -> None:
    return_path = sent_return_path(relay, test_mx, "bob@example.com")
    local, _, domain = return_path.partition("@")
    assert domain == DOMAIN and local.startswith("b+") and len(local) == 34
    assert SignedVerpCodec(DOMAIN, KEY).check(return_path, "bob@example.com").verified


def test_relay_built_dsn_to_the_return_path_suppresses_the_recipient(
    relay: Any, test_mx: Any
) -> None:
    return_path = sent_return_path(relay, test_mx, "bob@example.com")
    dsn = relay_dsn(
        "bob@example.com", "5.1.1", "smtp; 550 5.1.1 <bob@example.com>: User unknown", return_path
    )
    code, text = returned(relay, return_path, dsn)
    assert code == 250, text
    e = entry(relay, "bob@example.com")
    assert e is not None and (e.reason, e.evidence, e.source) == (
        "userunknown",
        "dsn-verified",
        "dsn",
    )
    assert history(relay, "bob@example.com")[-1].actor == "intake"


def test_corpus_dsn_to_the_return_path_suppresses_the_recipient(relay: Any, test_mx: Any) -> None:
    # lhost-postfix-04: Postfix's 550 5.1.1 for kijitora@example.co.jp
    return_path = sent_return_path(relay, test_mx, "kijitora@example.co.jp")
    code, _ = returned(relay, return_path, (CORPUS / "lhost-postfix-04.eml").read_bytes())
    assert code == 250
    e = entry(relay, "kijitora@example.co.jp")
    assert e is not None and e.evidence == "dsn-verified"


def tampered(address: str) -> str:
    i = 12  # inside the message id: the signature no longer matches
    return address[:i] + ("a" if address[i] != "a" else "b") + address[i + 1 :]


CODEC = SignedVerpCodec(DOMAIN, KEY)


@pytest.mark.parametrize(
    ("make_rcpt", "reason"),
    [
        (lambda rp: f"bounces@{DOMAIN}", "no-token"),
        (tampered, "bad-signature"),
        (lambda rp: CODEC.encode(1, "bob@example.com", now=0.0), "expired"),
        (lambda rp: CODEC.encode(1, "carol@example.com"), "other-recipient"),
        (lambda rp: CODEC.encode(999_999, "bob@example.com"), "unknown-message"),
    ],
)
def test_same_dsn_without_a_valid_token_suppresses_nobody(
    relay: Any, test_mx: Any, make_rcpt: Any, reason: str
) -> None:
    return_path = sent_return_path(relay, test_mx, "bob@example.com")
    rcpt = make_rcpt(return_path)
    dsn = relay_dsn(
        "bob@example.com", "5.1.1", "smtp; 550 5.1.1 <bob@example.com>: User unknown", rcpt
    )
    code, text = returned(relay, rcpt, dsn)
    assert code == 250, text
    assert entry(relay, "bob@example.com") is None
    (recorded,) = history(relay, "bob@example.com")
    assert (recorded.action, recorded.evidence) == ("recorded", "dsn-unverified")
    assert recorded.note.startswith(reason), recorded.note


def test_soft_dsn_does_not_suppress(relay: Any, test_mx: Any) -> None:
    return_path = sent_return_path(relay, test_mx, "bob@example.com")
    dsn = relay_dsn("bob@example.com", "4.2.2", "smtp; 452 4.2.2 Mailbox full", return_path)
    assert returned(relay, return_path, dsn)[0] == 250
    assert entry(relay, "bob@example.com") is None


def test_arf_report_not_tied_to_our_send_is_only_recorded(relay: Any) -> None:
    code, _ = returned(relay, f"fbl@{DOMAIN}", (CORPUS / "arf-02.eml").read_bytes())
    assert code == 250
    complainer = "this-local-part-does-not-exist-on-yahoo@yahoo.com"
    assert entry(relay, complainer) is None
    (recorded,) = history(relay, complainer)
    assert (recorded.action, recorded.evidence) == ("recorded", "arf-unverified")


def test_arf_report_about_our_send_is_a_complaint(relay: Any, test_mx: Any) -> None:
    complainer = "this-local-part-does-not-exist-on-yahoo@yahoo.com"
    return_path = sent_return_path(relay, test_mx, complainer)
    # The feedback loop's report names our signed envelope sender (Original-Mail-From).
    report = (
        (CORPUS / "arf-02.eml")
        .read_bytes()
        .replace(
            b"Original-Mail-From: <shironeko@example.com>",
            f"Original-Mail-From: <{return_path}>".encode(),
        )
    )
    code, _ = returned(relay, f"fbl@{DOMAIN}", report)
    assert code == 250
    e = entry(relay, complainer)
    assert e is not None and (e.reason, e.evidence) == ("complaint", "arf")


def test_vacation_reply_changes_nothing(relay: Any, test_mx: Any) -> None:
    return_path = sent_return_path(relay, test_mx, "kijitora@example.net")
    code, text = returned(
        relay, return_path, (CORPUS / "rfc3834-01.eml").read_bytes(), "kijitora@example.net"
    )
    assert (code, text) == (250, b"2.0.0 Ok: nothing to record")
    assert history(relay, "kijitora@example.net") == []


def test_other_domains_are_never_relayed(relay: Any) -> None:
    code, text = returned(relay, "someone@example.com", b"Subject: x\r\n\r\nx\r\n")
    assert code == 554 and b"Relay access denied" in text


def test_one_client_is_held_to_the_rate_limit(relay: Any) -> None:
    codes = [returned(relay, f"x{i}@{DOMAIN}", b"Subject: x\r\n\r\nx\r\n")[0] for i in range(25)]
    assert codes[:20] == [250] * 20
    assert codes[20:] == [450] * 5


def test_a_redacted_complaint_about_our_send_is_a_complaint_about_its_recipient(
    relay: Any, test_mx: Any
) -> None:
    from tests.test_intake_returned import redacted_report

    complainer = "carol@yahoo.com"
    return_path = sent_return_path(relay, test_mx, complainer)
    code, _ = returned(relay, f"fbl@{DOMAIN}", redacted_report(return_path))
    assert code == 250
    e = entry(relay, complainer)
    assert e is not None and (e.reason, e.evidence) == ("complaint", "arf")
    assert "the report redacts the recipient" in history(relay, complainer)[-1].note


# --------------------------------------------------------------------------- the relay port


def relay_port_reply(relay: Any, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP(relay.host, relay.port, local_hostname="postfix.test", timeout=30) as s:
        s.ehlo()
        assert s.mail("")[0] == 250
        return s.rcpt(rcpt)


def test_bounce_domain_mail_on_the_relay_port_is_refused_with_where_it_belongs(
    relay: Any, test_mx: Any
) -> None:
    return_path = CODEC.encode(1, "bob@example.com")
    code, text = relay_port_reply(relay, return_path)
    assert (code, text.decode()) == (
        451,
        f"4.3.5 <{return_path}>: the bounce domain {DOMAIN} is received on intake.listen"
        f" (127.0.0.1:{relay.intake_port}), not on the relay port: route it there"
        " (transport_maps)",
    )
    # Kept by the client (a 4xx), never queued, so never relayed back out.
    assert relay_port_reply(relay, "someone@example.com")[0] == 250
    assert test_mx.messages == []
    assert "is for the bounce domain: misrouted" in relay.log()


def test_without_an_intake_listener_bounce_domain_mail_is_still_not_relayed(
    start_relay: Any, tmp_path: Path
) -> None:
    key = tmp_path / "verp.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    from tests.test_relay_metrics import scrape, value

    metrics = free_port()
    relay = start_relay(
        intake={"bounce_domain": DOMAIN, "secret_file": str(key)},
        metrics={"listen": f"127.0.0.1:{metrics}"},
    )
    code, text = relay_port_reply(relay, f"b+anything@{DOMAIN.upper()}")
    assert code == 451
    assert b"is not relayed (intake.listen is not set)" in text
    _, samples = scrape(metrics)
    assert value(samples, "smtpguard_inbound_refusals_total", reason="bounce_domain") == 1
    assert value(samples, "smtpguard_inbound_refusals_total", reason="lookup_failed") == 0
