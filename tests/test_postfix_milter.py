"""``smtpguard milter`` inside a REAL Postfix, configured with conf/postfix/milter.cf.

    client --SMTP--> Postfix (smtpd_milters = smtpguard milter) --relayhost--> test MX

Clients on 127.0.0.1 are this host's own users (``milter.internal_networks``
is ``127.0.0.1/32`` here); a client on 127.0.0.2 stands for a server elsewhere
on the Internet sending mail in, such as a bounce. With a bounce domain and
``milter.rewrite_sender``, outgoing mail leaves with a signed return path, and what
comes back to it (from outside, or Postfix's own DSN) is judged as the intake does.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smtpguard.intake.verp import SignedVerpCodec
from smtpguard.store.sent import MILTER_IDS, SentLookup
from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.mx import TestMx
from tests.fixtures.net import free_port
from tests.fixtures.postfix import PostfixFactory, PostfixInstance
from tests.fixtures.relay import SUPPRESSED, RelayProcess, relay_refusal

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

GOOD = "carol@example.com"
SENDER = "alice@sender.test"
OUTSIDE = "127.0.0.2"  # a client elsewhere on the Internet
CORPUS = Path(__file__).parent / "corpus" / "sisimai-dev"
BOUNCE_DOMAIN = "bounce.example.org"
KEY = b"a milter return path key, 32 b.."


def message(subject: str, extra_headers: str = "") -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{GOOD}>\r\nSubject: {subject}\r\n{extra_headers}\r\n"
        f"Body of {subject}.\r\n"
    ).encode()


def dsn(failed: str, status: str = "5.1.1", text: str = "User unknown") -> bytes:
    """A returned message as Postfix writes one (RFC 3464), reporting ``failed``."""
    return (
        "From: MAILER-DAEMON@mx.remote.example (Mail Delivery System)\r\n"
        f"To: <{SENDER}>\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\n"
        f"<{failed}>: host mx.example.com[192.0.2.8] said: 550 {status} {text}"
        " (in reply to RCPT TO command)\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.remote.example\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; mx.example.com\r\nDiagnostic-Code: smtp; 550 {status} {text}\r\n\r\n"
        "--B--\r\n"
    ).encode()


@dataclass
class Stack:
    postfix: PostfixInstance
    milter: RelayProcess
    mx: TestMx
    store: SuppressionStore
    codec: SignedVerpCodec | None = None

    def expected_refusal(self, address: str) -> str:
        """What the relay answers at RCPT for ``address`` (its exact text)."""
        return relay_refusal(self.store, address)

    def delivered(self, count: int) -> list[Any]:
        return self.mx.wait_for(count, timeout=20)


@pytest.fixture
def store(suppressed_store: SuppressionStore) -> SuppressionStore:
    return suppressed_store


@pytest.fixture
def make_stack(
    postfix_factory: PostfixFactory,
    start_service: Callable[..., RelayProcess],
    test_mx: TestMx,
    store: SuppressionStore,
    tmp_path: Path,
) -> Callable[..., Stack]:
    """``make(listen="", intake=None, main=None, **milter)``; ``intake``: the bounce
    domain's settings (signed with :data:`KEY`), ``main``: more main.cf lines."""

    def make(
        listen: str = "",
        intake: dict[str, Any] | None = None,
        main: dict[str, str] | None = None,
        **milter: Any,
    ) -> Stack:
        settings = {
            "listen": listen or f"inet:127.0.0.1:{free_port()}",
            "internal_networks": ["127.0.0.1/32"],
            **milter,
        }
        sections: dict[str, dict[str, Any]] = {"milter": settings}
        codec = None
        if intake is not None:
            key = tmp_path / "verp.key"
            key.write_bytes(KEY)
            key.chmod(0o600)
            sections["intake"] = {"bounce_domain": BOUNCE_DOMAIN, "secret_file": str(key), **intake}
            codec = SignedVerpCodec(BOUNCE_DOMAIN, KEY)
        proc = start_service("milter", **sections)
        postfix = postfix_factory(test_mx.port, milter=proc.where, main=main)
        return Stack(postfix, proc, test_mx, store, codec)

    return make


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


# --------------------------------------------------------------------------- RCPT


def test_postfix_refuses_a_suppressed_recipient_at_rcpt_with_the_relays_text(stack: Stack) -> None:
    reply = stack.postfix.send(SENDER, SUPPRESSED, message("to bob"))
    assert str(reply) == stack.expected_refusal(SUPPRESSED)
    stack.postfix.wait_log(r"milter-reject: RCPT from .*: 550 5\.1\.1 <bob@example\.com>: ")


def test_the_other_recipients_of_the_message_are_delivered(stack: Stack) -> None:
    reply = stack.postfix.send(SENDER, [SUPPRESSED, GOOD], message("to both"))
    assert reply.code == 550
    [received] = stack.delivered(1)
    assert received.rcpt_tos == [GOOD]


def test_a_percent_sign_in_the_evidence_reaches_the_client_intact(stack: Stack) -> None:
    stack.store.record("dave@example.com", "userunknown", source="smtp-reply", actor="test",
                       diagnostic="550 5.1.1 dave: 100% unknown (50%% sure)")  # fmt: skip
    reply = stack.postfix.send(SENDER, "dave@example.com", message("to dave"))
    assert str(reply) == stack.expected_refusal("dave@example.com")
    assert str(reply).endswith("(550 5.1.1 dave: 100% unknown (50%% sure))")


def test_tempfail_mode_delays_a_suppressed_recipient(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(on_suppressed="tempfail")
    reply = stack.postfix.send(SENDER, SUPPRESSED, message("to bob"))
    expected = stack.expected_refusal(SUPPRESSED).replace("550 5.1.1 ", "450 4.1.1 ", 1)
    assert str(reply) == expected


def test_discard_mode_drops_only_the_suppressed_recipient(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(on_suppressed="discard")
    assert stack.postfix.send(SENDER, [SUPPRESSED, GOOD], message("to both")).code == 250
    [received] = stack.delivered(1)
    assert received.rcpt_tos == [GOOD]
    assert stack.postfix.send(SENDER, SUPPRESSED, message("to bob only")).code == 250
    stack.postfix.wait_log(r"milter-discard: END-OF-MESSAGE")
    assert len(stack.mx.messages) == 1


def test_locally_submitted_mail_is_never_refused(stack: Stack) -> None:
    # Postfix forbids a non_smtpd milter to refuse a recipient (the message would
    # stay queued as a configuration error): the milter lets it pass and logs it.
    subprocess.run(
        ["/usr/sbin/sendmail", "-C", str(stack.postfix.etc), "-f", SENDER, SUPPRESSED],
        input=message("local"), check=True, timeout=30,
    )  # fmt: skip
    [received] = stack.delivered(1)
    assert received.rcpt_tos == [SUPPRESSED]
    assert "Postfix does not let a milter refuse recipients" in stack.milter.log()
    assert "configuration error" not in stack.postfix.log()


# --------------------------------------------------------------------------- bounces


def test_an_incoming_dsn_is_recorded_as_unverified_and_suppresses_nobody(stack: Stack) -> None:
    failed = "kijitora@example.net"
    reply = stack.postfix.send("", SENDER, dsn(failed), source=OUTSIDE)
    assert reply.code == 250
    [received] = stack.delivered(1)
    assert received.message()["X-Smtpguard-Bounce"] == (
        f"{failed}; bounce=hard; reason=userunknown; status=5.1.1;"
        " evidence=dsn-unverified; outcome=recorded"
    )
    assert stack.store.lookup(failed) is None
    [history] = stack.store.history(failed)
    assert (history.action, history.evidence, history.actor) == (
        "recorded", "dsn-unverified", "milter",
    )  # fmt: skip
    assert history.note.startswith("postfix queue id ")
    assert "dsn-unverified: kijitora@example.net userunknown recorded" in stack.milter.log()


def test_an_arf_report_not_tied_to_our_send_is_recorded_not_enforced(stack: Stack) -> None:
    # Anyone can mail an ARF report: without our signed return path it suppresses nobody.
    report = (CORPUS / "arf-02.eml").read_bytes()
    assert stack.postfix.send("fbl@isp.example", SENDER, report, source=OUTSIDE).code == 250
    [received] = stack.delivered(1)
    header = received.message()["X-Smtpguard-Bounce"]
    assert "reason=feedback; evidence=arf-unverified; outcome=recorded" in header
    complainer = header.split(";")[0]
    assert stack.store.lookup(complainer) is None
    [history] = stack.store.history(complainer)
    assert (history.action, history.evidence) == ("recorded", "arf-unverified")


def test_an_auto_reply_records_nothing(stack: Stack) -> None:
    reply = message("Out of Office: hello", "Auto-Submitted: auto-replied\r\n")
    assert stack.postfix.send("carol@example.com", SENDER, reply, source=OUTSIDE).code == 250
    [received] = stack.delivered(1)
    assert received.message()["X-Smtpguard-Bounce"] is None
    assert stack.store.history(GOOD) == []


def test_a_forged_bounce_header_from_outside_is_removed(stack: Stack) -> None:
    forged = "X-Smtpguard-Bounce: someone@example.net; evidence=dsn-verified\r\n"
    reply = stack.postfix.send(SENDER, GOOD, message("forged", forged), source=OUTSIDE)
    assert reply.code == 250
    [received] = stack.delivered(1)
    assert received.message()["X-Smtpguard-Bounce"] is None


def test_mail_from_this_hosts_own_clients_is_not_classified(stack: Stack) -> None:
    assert stack.postfix.send("", SENDER, dsn("kijitora@example.net")).code == 250
    [received] = stack.delivered(1)
    assert received.message()["X-Smtpguard-Bounce"] is None


def test_no_header_when_bounce_header_is_off(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(bounce_header=False)
    assert stack.postfix.send("", SENDER, dsn("kijitora@example.net"), source=OUTSIDE).code == 250
    [received] = stack.delivered(1)
    assert received.message()["X-Smtpguard-Bounce"] is None
    assert "dsn-unverified" in stack.milter.log()


# --------------------------------------------------------------------------- signed return paths


@pytest.fixture
def signed(make_stack: Callable[..., Stack]) -> Stack:
    """Bounce domain, sender rewriting, and Postfix's own DSNs through the milter too."""
    return make_stack(
        intake={}, rewrite_sender=True, main={"internal_mail_filter_classes": "bounce"}
    )


def sent_return_path(stack: Stack, recipient: str) -> str:
    """Send through Postfix as a local user; the envelope sender the MX saw."""
    assert stack.postfix.send(SENDER, recipient, message(f"to {recipient}")).code == 250
    [received] = stack.delivered(1)
    return received.mail_from


def recorded(stack: Stack, address: str, timeout: float = 30.0) -> list[Any]:
    """The history of ``address`` once something is recorded for it (bounded wait)."""
    deadline = time.monotonic() + timeout
    while not (rows := stack.store.history(address)):
        assert time.monotonic() < deadline, f"nothing recorded for {address}:\n{stack.milter.log()}"
        time.sleep(0.1)
    return rows


def test_outgoing_mail_leaves_postfix_with_a_signed_return_path(signed: Stack) -> None:
    return_path = sent_return_path(signed, GOOD)
    assert return_path.startswith("b+") and return_path.endswith("@" + BOUNCE_DOMAIN)
    assert signed.codec is not None
    check = signed.codec.check(return_path, GOOD)
    assert check.verified, check
    # The milter's own id space, and the message is on record for what comes back.
    assert check.message_id is not None and check.message_id >= MILTER_IDS
    lookup = SentLookup.open(signed.store.path.parent)
    try:
        assert lookup.was_sent(check.message_id, GOOD)
        assert not lookup.was_sent(check.message_id, "dave@example.com")
    finally:
        lookup.close()


def test_a_message_to_several_recipients_keeps_its_sender(signed: Stack) -> None:
    # A token names one recipient; a bounce of this message could not say whose it is.
    reply = signed.postfix.send(SENDER, [GOOD, "dave@example.com"], message("to two"))
    assert reply.code == 250
    [received] = signed.delivered(1)
    assert received.mail_from == SENDER


def test_a_dsn_to_a_signed_return_path_is_verified_and_suppresses(signed: Stack) -> None:
    return_path = sent_return_path(signed, GOOD)
    reply = signed.postfix.send("", return_path, dsn(GOOD), source=OUTSIDE)
    assert reply.code == 250
    entry = signed.store.lookup(GOOD)  # recorded before Postfix answered the final dot
    assert entry is not None
    assert (entry.reason, entry.evidence) == ("userunknown", "dsn-verified")
    [history] = signed.store.history(GOOD)
    assert (history.action, history.actor) == ("added", "milter")
    assert history.note.startswith("postfix queue id ")
    # Mail for the bounce domain ends at the milter: recorded, not delivered on.
    signed.postfix.wait_log(r"milter-discard: END-OF-MESSAGE")
    assert len(signed.mx.messages) == 1


def test_a_forged_return_path_is_unverified_and_suppresses_nobody(signed: Stack) -> None:
    forged = f"b+{'b' * 32}@{BOUNCE_DOMAIN}"
    assert signed.postfix.send("", forged, dsn(GOOD), source=OUTSIDE).code == 250
    assert signed.store.lookup(GOOD) is None
    [history] = signed.store.history(GOOD)
    assert (history.action, history.evidence, history.actor) == (
        "recorded", "dsn-unverified", "milter",
    )  # fmt: skip


def test_postfixs_own_dsn_to_a_signed_return_path_suppresses(signed: Stack) -> None:
    # The MX refuses the recipient; Postfix mails its DSN to the signed return path,
    # and with internal_mail_filter_classes = bounce that DSN passes the milter too.
    dead = "dave@example.com"
    signed.mx.script(dead, f"550 5.1.1 <{dead}>: Recipient address rejected: User unknown")
    assert signed.postfix.send(SENDER, dead, message("to dave")).code == 250
    history = recorded(signed, dead)
    assert [(h.action, h.evidence, h.actor) for h in history] == [
        ("added", "dsn-verified", "milter")
    ]
    entry = signed.store.lookup(dead)
    assert entry is not None and entry.reason == "userunknown"
    signed.postfix.wait_log(r"milter-discard: END-OF-MESSAGE")
    assert signed.mx.messages == []


def test_with_an_intake_listener_the_bounce_domain_is_left_to_it(
    make_stack: Callable[..., Stack],
) -> None:
    # Postfix routes the bounce domain to intake.listen, which records it: not twice.
    stack = make_stack(intake={"listen": f"127.0.0.1:{free_port()}"})
    assert stack.codec is not None
    return_path = stack.codec.encode(MILTER_IDS + 1, GOOD)
    assert stack.postfix.send("", return_path, dsn(GOOD), source=OUTSIDE).code == 250
    [received] = stack.delivered(1)
    assert received.rcpt_tos == [return_path]
    assert received.message()["X-Smtpguard-Bounce"] is None
    assert stack.store.history(GOOD) == []


# --------------------------------------------------------------------------- trouble


def test_killing_the_milter_leaves_postfix_delivering(stack: Stack) -> None:
    assert stack.postfix.send(SENDER, SUPPRESSED, message("before")).code == 550
    stack.milter.kill()
    # milter_default_action = accept (conf/postfix/milter.cf): as if there were no milter.
    assert stack.postfix.send(SENDER, SUPPRESSED, message("after")).code == 250
    [received] = stack.delivered(1)
    assert received.rcpt_tos == [SUPPRESSED]
    stack.postfix.wait_log(r"warning: connect to Milter service inet:127\.0\.0\.1:\d+: ")


def test_a_store_that_cannot_be_read_answers_on_error(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(on_error="tempfail")
    assert stack.postfix.send(SENDER, SUPPRESSED, message("before")).code == 550
    db = stack.store.path
    stack.store.close()
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            path.write_bytes(b"\x00" * path.stat().st_size)
    reply = stack.postfix.send(SENDER, GOOD, message("after"))
    assert str(reply) == "451 4.3.0 smtpguard: temporary lookup failure, try again"


def test_sigterm_stops_the_milter_with_exit_code_0(stack: Stack) -> None:
    stack.milter.proc.send_signal(signal.SIGTERM)
    assert stack.milter.proc.wait(timeout=20) == 0
    assert "milter stopped" in stack.milter.log()


# --------------------------------------------------------------------------- unix socket


def test_a_unix_socket_with_the_configured_permissions(make_stack: Callable[..., Stack]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="smtpguard-milter-"))
    directory.chmod(0o755)  # Postfix's smtpd runs as the postfix user
    sock = directory / "milter.sock"
    try:
        stack = make_stack(listen=f"unix:{sock}", socket_mode="666")
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o666
        reply = stack.postfix.send(SENDER, SUPPRESSED, message("to bob"))
        assert str(reply) == stack.expected_refusal(SUPPRESSED)
    finally:
        for p in directory.iterdir():
            os.unlink(p)
        directory.rmdir()


def test_a_milter_socket_in_use_is_a_one_line_error(start_service: Callable[..., Any]) -> None:
    first = start_service("milter", milter={"listen": f"inet:127.0.0.1:{free_port()}"})
    with pytest.raises(RuntimeError, match="did not report listening") as failure:
        start_service("milter", milter={"listen": first.where})
    assert f"smtpguard: error: milter.listen {first.where}: cannot listen" in str(failure.value)
    assert first.proc.poll() is None
