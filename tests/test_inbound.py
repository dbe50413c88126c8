"""The relay's inbound SMTP server, spoken to over real loopback sockets.

Each test starts an :class:`InboundServer` in-process on its own event loop in
a thread (port 0), with an ``enqueue`` that records what would be committed
(the queue's contract, not a mock of SMTP or the database) and, for
suppression, the real SQLite-backed recipient policy. Clients
are :mod:`smtplib` (always with ``local_hostname=``) or a raw socket where the
test needs byte-exact control (smuggling, pipelining, long lines).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import select
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from smtpguard.config import Config
from smtpguard.policy.recipient import (
    ACCEPT,
    Client,
    Decision,
    RecipientPolicy,
    SuppressionPolicy,
)
from smtpguard.relay.inbound import InboundServer
from smtpguard.smtp.data import normalise_line_endings
from smtpguard.smtp.headers import is_auto_submitted
from smtpguard.smtp.params import ParamError, parse_notify, parse_orcpt, xtext_decode
from smtpguard.store.messages import InboundMessage
from smtpguard.store.queue import QueueStore, parse_qid
from smtpguard.store.suppression import AsyncSuppressionStore, SuppressionStore

HELO = "client.test"
BODY = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"


class AcceptAll:
    """A recipient policy that refuses nobody (tests about everything but suppression)."""

    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        return ACCEPT

    def close(self) -> None:
        pass


class Running:
    """An InboundServer on its own loop thread, plus what it enqueued."""

    def __init__(
        self,
        cfg: Config,
        *,
        enqueue: Callable[[InboundMessage], Awaitable[str]] | None = None,
        policy: RecipientPolicy | None = None,
    ) -> None:
        self.messages: list[InboundMessage] = []
        self.clients: list[Raw] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def record(msg: InboundMessage) -> str:
            self.messages.append(msg)
            return f"Q{len(self.messages):04d}"

        async def make() -> InboundServer:
            server = InboundServer(cfg, enqueue=enqueue or record, policy=policy or AcceptAll())
            await server.start()
            return server

        self.server = self.call(make())
        self.port = self.server.port

    def call(self, coro: Awaitable[Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if not self.server.stopping:
            self.call(self.server.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def smtp(self, **kw: Any) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname=HELO, timeout=5, **kw)

    def raw(self, *, greeting: bool = True) -> Raw:
        client = Raw(self.port, greeting=greeting)
        self.clients.append(client)
        return client


class Raw:
    """A byte-exact SMTP client over a plain socket."""

    def __init__(self, port: int, *, greeting: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply() if greeting else ""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One (possibly multi-line) reply, lines joined with newlines."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode("utf-8").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True if the server closed the connection (EOF), within the socket timeout."""
        try:
            return self.file.readline() == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def relay_config(**relay: Any) -> Config:
    """Defaults plus overrides, listening on 127.0.0.1 port 0.

    ``dataclasses.replace`` sets the port-0 listen address that the config
    loader (rightly) refuses for an operator's file.
    """
    cfg = Config().with_overrides(relay=relay) if relay else Config()
    return dataclasses.replace(cfg, relay=dataclasses.replace(cfg.relay, listen="127.0.0.1:0"))


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    """``start(max_recipients=2, enqueue=..., policy=...)`` -> a Running server."""
    running: list[Running] = []

    def make(
        *,
        enqueue: Callable[[InboundMessage], Awaitable[str]] | None = None,
        policy: RecipientPolicy | None = None,
        **relay: Any,
    ) -> Running:
        r = Running(relay_config(**relay), enqueue=enqueue, policy=policy)
        running.append(r)
        return r

    yield make
    for r in running:
        r.close()


@pytest.fixture
def server(start: Callable[..., Running]) -> Running:
    return start()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for STARTTLS (openssl must be installed)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
         "/CN=smtpguard.test"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text("# relay users\nalice:s3cret:with:colons\n\nbob:hunter2\n")
    return path


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def transaction(raw: Raw, *, rcpts: tuple[str, ...] = ("<b@example.net>",)) -> None:
    assert raw.cmd("EHLO " + HELO).startswith("250")
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("250")
    for rcpt in rcpts:
        assert raw.cmd(f"RCPT TO:{rcpt}").startswith("250")


# --------------------------------------------------------------------------- accepting


def test_trusted_client_message_is_queued_and_answered_with_queue_id(server: Running) -> None:
    with server.smtp() as c:
        c.ehlo()
        c.mail("<Sender@Example.COM>")
        c.rcpt("<Rcpt@Example.NET>")
        code, text = c.data(BODY)
    assert (code, text) == (250, b"2.0.0 Ok: queued as Q0001")
    [msg] = server.messages
    assert msg.mail_from == "Sender@example.com"  # local part as sent, domain normalised
    assert [r.address for r in msg.recipients] == ["Rcpt@example.net"]
    assert msg.client_address == "127.0.0.1"
    assert msg.helo == HELO
    assert msg.data.endswith(BODY)
    assert msg.received_at == pytest.approx(time.time(), abs=10)


def test_received_header_is_prepended_per_rfc_5321_4_4(server: Running) -> None:
    with server.smtp() as c:
        c.sendmail("a@example.com", ["b@example.net"], BODY)
    header = server.messages[0].data.split(b"\r\n\r\n")[0].decode()
    assert header.startswith(
        f"Received: from {HELO} (unknown [127.0.0.1])\r\n"
        "\tby smtpguard.localdomain (smtpguard) with ESMTP\r\n"
        "\tfor <b@example.net>;\r\n\t"
    )


def test_ehlo_advertises_what_postfix_expects(server: Running) -> None:
    with server.smtp() as c:
        code, _ = c.ehlo()
        assert code == 250
        assert c.esmtp_features["size"] == str(36_700_160)
        for ext in ("8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes", "dsn"):
            assert ext in c.esmtp_features
        assert "starttls" not in c.esmtp_features  # no certificate configured
        assert "auth" not in c.esmtp_features  # no users file


def test_replies_carry_enhanced_status_codes(server: Running) -> None:
    raw = server.raw()
    assert raw.cmd("EHLO " + HELO).startswith("250-")
    assert raw.cmd("NOOP") == "250 2.0.0 OK"
    assert raw.cmd("RCPT TO:<b@example.net>") == "503 5.5.1 Error: need MAIL command"
    assert raw.cmd("FROB").startswith("500 5.5.2 ")
    assert raw.cmd("RSET") == "250 2.0.0 OK"
    assert raw.cmd("QUIT") == "221 2.0.0 Bye"


def test_pipelined_commands_get_replies_in_order(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.send(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\n"
    )
    assert [raw.reply() for _ in range(4)] == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert raw.cmd(BODY + b".") == "250 2.0.0 Ok: queued as Q0001"
    assert len(server.messages[0].recipients) == 2


def test_null_sender_is_accepted(server: Running) -> None:
    with server.smtp() as c:
        c.sendmail("<>", ["b@example.net"], BODY)
    assert server.messages[0].mail_from == ""


def test_duplicate_recipient_is_queued_once(server: Running) -> None:
    raw = server.raw()
    transaction(raw, rcpts=("<b@example.net>", "<B@EXAMPLE.net>"))
    raw.cmd("DATA")
    raw.cmd(BODY + b".")
    assert [r.address for r in server.messages[0].recipients] == ["b@example.net"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Auto-Submitted: auto-replied\r\n", True),
        (b"auto-submitted:  auto-generated (vacation)\r\n", True),
        (b"Auto-Submitted: no\r\n", False),
        (b"Auto-Submitted: No (a human wrote this)\r\n", False),
        (b"", False),
    ],
)
def test_auto_submitted_header_sets_the_flag(
    server: Running, header: bytes, expected: bool
) -> None:
    with server.smtp() as c:
        c.sendmail("a@example.com", ["b@example.net"], header + BODY)
    assert server.messages[0].auto_submitted is expected


def test_body_8bitmime_and_smtputf8_are_recorded(server: Running) -> None:
    with server.smtp() as c:
        c.ehlo()
        c.mail("<jösé@bücher.example>", ["BODY=8BITMIME", "SMTPUTF8"])
        assert c.rcpt("<zoë@例え.テスト>")[0] == 250
        assert c.data("Subject: ünïcode\r\n\r\nbody\r\n".encode())[0] == 250
    [msg] = server.messages
    assert (msg.body, msg.smtputf8) == ("8BITMIME", True)
    assert msg.mail_from == "jösé@xn--bcher-kva.example"
    assert msg.recipients[0].address == "zoë@xn--r8jz45g.xn--zckzah"
    assert b"with UTF8SMTP" in msg.data


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "path", ["a@example.com", "<a@@example.com>", "<a b@example.com>", "<a@exa_mple.com>", "<@>"]
)
def test_bad_sender_gets_501_5_1_7(server: Running, path: str) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd(f"MAIL FROM:{path}").startswith("501 5.1.7 ")


@pytest.mark.parametrize(
    "path", ["b@example.net", "<>", "<b@>", "<b..c@example.net>", "<b@example.net", "<b@-x.net>"]
)
def test_bad_recipient_gets_501_5_1_3(server: Running, path: str) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd(f"RCPT TO:{path}").startswith("501 5.1.3 ")


def test_non_ascii_address_without_smtputf8_gets_553_5_6_7(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("MAIL FROM:<jösé@example.com>").startswith("553 5.6.7 ")
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd("RCPT TO:<zoë@example.net>").startswith("553 5.6.7 ")


def test_control_character_in_address_is_refused_not_put_in_a_header(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd(b"RCPT TO:<b\rBcc: x@example.net>").startswith("501 5.1.3 ")


def test_invalid_utf8_address_gets_501_5_1_3(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com> SMTPUTF8")
    assert raw.cmd(b"RCPT TO:<b\xff\xfe@example.net>").startswith("501 5.1.3 ")


def test_helo_with_bare_cr_cannot_inject_a_header(server: Running) -> None:
    raw = server.raw()
    assert raw.cmd(b"EHLO evil\rX-Injected: yes").startswith("250")
    raw.cmd("MAIL FROM:<a@example.com>")
    raw.cmd("RCPT TO:<b@example.net>")
    raw.cmd("DATA")
    assert raw.cmd(BODY + b".").startswith("250 2.0.0")
    [msg] = server.messages
    assert msg.data.startswith(b"Received: from unknown (unknown [127.0.0.1])\r\n")
    assert b"X-Injected" not in msg.data.split(b"\r\n\r\n")[0]
    assert "\r" not in msg.helo and "\n" not in msg.helo


# --------------------------------------------------------------------------- DSN parameters


def test_dsn_parameters_are_parsed_and_passed_through(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("MAIL FROM:<a@example.com> RET=hdrs ENVID=QQ+2B123+3Dx") == "250 2.1.0 Ok"
    assert raw.cmd("RCPT TO:<b@example.net> NOTIFY=success,FAILURE ORCPT=rfc822;B+2Bx@example.net")
    assert raw.cmd("RCPT TO:<c@example.net> NOTIFY=NEVER").startswith("250")
    assert raw.cmd("RCPT TO:<d@example.net>").startswith("250")
    raw.cmd("DATA")
    raw.cmd(BODY + b".")
    [msg] = server.messages
    assert (msg.ret, msg.envid) == ("HDRS", "QQ+123=x")
    b, c, d = msg.recipients
    assert (b.notify, b.orcpt) == (("SUCCESS", "FAILURE"), "rfc822;B+x@example.net")
    assert (c.notify, c.orcpt) == (("NEVER",), "")
    assert (d.notify, d.orcpt) == ((), "")


def test_utf8_orcpt_is_decoded(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd(r"RCPT TO:<b@example.net> ORCPT=utf-8;z\x{EB}@example.net").startswith("250")
    raw.cmd("DATA")
    raw.cmd(BODY + b".")
    assert server.messages[0].recipients[0].orcpt == "utf-8;zë@example.net"


@pytest.mark.parametrize(
    "params",
    [
        "RET=ALL",
        "RET=FULL RET=HDRS",
        "ENVID=abc+zz",
        "ENVID=a+0D+0ABcc:x",
        "ENVID=" + "x" * 101,
        "BODY=BINARYMIME",
        "SIZE=big",
        "SMTPUTF8=yes",
        "=x",
    ],
)
def test_malformed_mail_parameter_gets_501_5_5_4(server: Running, params: str) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd(f"MAIL FROM:<a@example.com> {params}").startswith("501 5.5.4 ")


@pytest.mark.parametrize(
    "params",
    ["NOTIFY=NEVER,SUCCESS", "NOTIFY=SOMETIMES", "NOTIFY=", "ORCPT=b@example.net",
     "ORCPT=rfc822;a+0Ab@example.net", "ORCPT=rfc822;a+4"],
)  # fmt: skip
def test_malformed_rcpt_parameter_gets_501_5_5_4(server: Running, params: str) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd(f"RCPT TO:<b@example.net> {params}").startswith("501 5.5.4 ")


def test_unknown_parameter_gets_555_5_5_4(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("MAIL FROM:<a@example.com> FROB=1").startswith("555 5.5.4 ")
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd("RCPT TO:<b@example.net> FROB").startswith("555 5.5.4 ")


def test_xtext_and_notify_helpers() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    with pytest.raises(ParamError):
        xtext_decode("a+2b")  # hexchar is upper-case only (RFC 3461 section 4)
    assert parse_notify("delay,failure,DELAY") == ("DELAY", "FAILURE")
    assert parse_orcpt("RFC822;x@y.example") == "RFC822;x@y.example"


# --------------------------------------------------------------------------- trust and AUTH


def test_untrusted_client_gets_554_5_7_1_relay_access_denied(start: Callable[..., Running]) -> None:
    def denied() -> float:
        labels = {"reason": "relay_denied"}
        return REGISTRY.get_sample_value("smtpguard_inbound_refusals_total", labels) or 0.0

    server = start(trusted_networks=["192.0.2.0/24"])
    before = denied()
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("250")
    assert raw.cmd("RCPT TO:<b@example.net>") == "554 5.7.1 <b@example.net>: Relay access denied"
    assert raw.cmd("DATA") == "554 5.5.1 Error: no valid recipients"
    assert server.messages == []
    assert denied() == before + 1  # counted in smtpguard_inbound_refusals_total


def test_auth_plain_success_lets_an_untrusted_client_relay(
    start: Callable[..., Running], users_file: Path
) -> None:
    server = start(trusted_networks=[], auth_users_file=str(users_file))
    with server.smtp() as c:
        c.ehlo()
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]  # loopback: no wire
        c.login("alice", "s3cret:with:colons")
        c.sendmail("a@example.com", ["b@example.net"], BODY)
    [msg] = server.messages
    assert msg.auth_user == "alice"
    assert b"with ESMTPA" in msg.data


def test_ipv6_loopback_client_is_trusted_by_default() -> None:
    cfg = relay_config()
    cfg = dataclasses.replace(cfg, relay=dataclasses.replace(cfg.relay, listen="[::1]:0"))
    server = Running(cfg)
    try:
        with smtplib.SMTP("::1", server.port, local_hostname=HELO, timeout=5) as c:
            c.sendmail("a@example.com", ["b@example.net"], BODY)
        assert server.messages[0].client_address == "::1"
    finally:
        server.close()


def test_trust_and_loopback_are_decided_by_client_address(
    start: Callable[..., Running],
) -> None:
    inbound = start(trusted_networks=["192.0.2.0/24", "::1/128"]).server
    assert inbound.classify_peer("192.0.2.7") == (True, False)
    assert inbound.classify_peer("198.51.100.1") == (False, False)  # AUTH only after STARTTLS
    assert inbound.classify_peer("127.0.0.1") == (False, True)  # AUTH in clear allowed
    assert inbound.classify_peer("::ffff:192.0.2.9") == (True, False)


def test_helo_client_can_relay_and_is_recorded_as_smtp(server: Running) -> None:
    with server.smtp() as c:
        assert c.helo()[0] == 250
        c.sendmail("a@example.com", ["b@example.net"], BODY)
    assert b" with SMTP\r\n" in server.messages[0].data


def test_auth_during_a_transaction_gets_503_5_5_1(
    start: Callable[..., Running], users_file: Path
) -> None:
    server = start(auth_users_file=str(users_file))
    raw = server.raw()
    transaction(raw, rcpts=())
    assert raw.cmd("AUTH PLAIN " + base64.b64encode(b"\0bob\0hunter2").decode()).startswith(
        "503 5.5.1 "
    )


def test_auth_login_success(start: Callable[..., Running], users_file: Path) -> None:
    server = start(trusted_networks=[], auth_users_file=str(users_file))
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("AUTH LOGIN " + base64.b64encode(b"bob").decode()).startswith("334 ")
    assert raw.cmd(base64.b64encode(b"hunter2")) == "235 2.7.0 Authentication successful"


def test_auth_failure_gets_535_and_relay_stays_denied(
    start: Callable[..., Running], users_file: Path
) -> None:
    server = start(trusted_networks=[], auth_users_file=str(users_file))
    with server.smtp() as c:
        c.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login("alice", "wrong")
        assert e.value.smtp_code == 535
        assert e.value.smtp_error.startswith(b"5.7.8 ")
        c.mail("<a@example.com>")
        code, text = c.rcpt("<b@example.net>")
    assert (code, text) == (554, b"5.7.1 <b@example.net>: Relay access denied")


def test_auth_is_not_offered_without_users_file(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("AUTH PLAIN AGFsaWNlAHgK").startswith("502 5.5.1 ")


def test_bad_users_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "users"
    bad.write_text("alice-without-password\n")
    with pytest.raises(Exception, match=r"users:1: expected 'user:password'"):
        InboundServer(
            relay_config(auth_users_file=str(bad)),
            enqueue=None,  # type: ignore[arg-type]
            policy=AcceptAll(),
        )


def test_starttls_then_auth_then_relay(
    start: Callable[..., Running], tls_files: tuple[Path, Path], users_file: Path
) -> None:
    cert, key = tls_files
    server = start(
        trusted_networks=[], auth_users_file=str(users_file), tls_cert=str(cert), tls_key=str(key)
    )
    with server.smtp() as c:
        c.ehlo()
        assert "starttls" in c.esmtp_features
        assert c.starttls(context=_client_context())[0] == 220
        c.ehlo()
        assert "starttls" not in c.esmtp_features
        c.login("bob", "hunter2")
        c.sendmail("a@example.com", ["b@example.net"], BODY)
    assert b"with ESMTPSA" in server.messages[0].data


def test_starttls_resets_the_session_rfc_3207(
    start: Callable[..., Running], tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    server = start(tls_cert=str(cert), tls_key=str(key))
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
    with _client_context().wrap_socket(raw.sock, server_hostname="smtpguard.test") as tls:
        tls.sendall(b"MAIL FROM:<a@example.com>\r\n")
        assert tls.recv(1024).startswith(b"503 5.5.1 ")  # EHLO again first (section 4.2)


# --------------------------------------------------------------------------- limits


def test_size_declared_too_big_at_mail_gets_552_5_3_4(start: Callable[..., Running]) -> None:
    server = start(max_message_size=1000)
    raw = server.raw()
    assert "250-SIZE 1000" in raw.cmd("EHLO " + HELO)
    assert raw.cmd("MAIL FROM:<a@example.com> SIZE=1001").startswith("552 5.3.4 ")
    assert raw.cmd("MAIL FROM:<a@example.com> SIZE=1000") == "250 2.1.0 Ok"


def test_data_too_big_gets_552_5_3_4_and_is_not_queued(start: Callable[..., Running]) -> None:
    server = start(max_message_size=1000)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20 + b".").startswith(
        "552 5.3.4 "
    )
    assert server.messages == []
    assert raw.cmd("MAIL FROM:<a@example.com>").startswith("250")  # session goes on


def test_recipient_beyond_the_limit_gets_452_4_5_3(start: Callable[..., Running]) -> None:
    server = start(max_recipients=2)
    raw = server.raw()
    transaction(raw, rcpts=("<b@example.net>", "<c@example.net>"))
    assert raw.cmd("RCPT TO:<d@example.net>") == "452 4.5.3 Error: too many recipients"
    raw.cmd("DATA")
    raw.cmd(BODY + b".")
    assert len(server.messages[0].recipients) == 2


def test_command_line_too_long_gets_500_5_5_2(start: Callable[..., Running]) -> None:
    server = start(max_line_length=100)
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    assert raw.cmd("NOOP " + "x" * 95) == "250 2.0.0 OK"  # exactly 100 octets
    assert raw.cmd("NOOP " + "x" * 96) == "500 5.5.2 Line too long"
    assert raw.cmd("NOOP " + "x" * 5000) == "500 5.5.2 Line too long"
    assert raw.cmd("NOOP") == "250 2.0.0 OK"


def test_data_line_too_long_rejects_the_message_with_500_5_5_2(
    start: Callable[..., Running],
) -> None:
    server = start(max_line_length=100)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(b"Subject: x\r\n\r\n" + b"y" * 101 + b"\r\nok\r\n.") == "500 5.5.2 Line too long"
    assert server.messages == []
    raw.cmd("MAIL FROM:<a@example.com>")
    raw.cmd("RCPT TO:<b@example.net>")
    raw.cmd("DATA")
    assert raw.cmd(b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n.").startswith("250 2.0.0")


def test_idle_client_gets_421_4_4_2_and_is_disconnected(start: Callable[..., Running]) -> None:
    server = start(idle_timeout=0.3)
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    t0 = time.monotonic()
    assert raw.reply() == "421 4.4.2 smtpguard.localdomain Error: timeout exceeded"
    assert 0.25 < time.monotonic() - t0 < 3
    assert raw.closed()


def test_slow_but_active_data_transfer_is_not_idle(start: Callable[..., Running]) -> None:
    # 6 octets every 0.15 s: 40 bytes/s, above the minimum data rate configured here.
    server = start(idle_timeout=0.4, min_data_rate=20)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    raw.send(b"Subject: slow\r\n\r\n")
    for _ in range(6):  # 0.9 s in all, never 0.4 s silent
        time.sleep(0.15)
        raw.send(b"line\r\n")
    assert raw.cmd(b".").startswith("250 2.0.0")


def test_client_going_silent_during_data_gets_421_4_4_2(start: Callable[..., Running]) -> None:
    server = start(idle_timeout=0.4, min_data_rate=20)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    for _ in range(4):  # active for 0.6 s (40 bytes/s), then silent
        time.sleep(0.15)
        raw.send(b"line\r\n")
    t0 = time.monotonic()
    assert raw.reply() == (
        "421 4.4.2 smtpguard.localdomain Error: timeout exceeded"
        " (message data slower than 20 bytes/s)"
    )
    assert 0.2 < time.monotonic() - t0 < 3
    assert raw.closed()
    assert server.messages == []


def test_session_beyond_max_sessions_gets_421_4_7_0(start: Callable[..., Running]) -> None:
    server = start(max_sessions=2)
    first, second = server.raw(), server.raw()
    transaction(first)  # both busy: none can make room
    transaction(second)
    third = server.raw(greeting=False)
    assert third.reply() == "421 4.7.0 smtpguard.localdomain Error: too many connections"
    assert third.closed()
    first.cmd("QUIT")
    deadline = time.monotonic() + 5
    while len(server.server.sessions) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.raw().greeting.startswith("220 ")
    second.cmd("QUIT")


# --------------------------------------------------------------------------- smuggling

SMUGGLED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nX\r\n"


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r", b"\r.\n", b"\n.\r"],
    ids=repr,
)
def test_fake_end_of_data_never_splits_a_message(server: Running, fake_end: bytes) -> None:
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    raw.send(b"Subject: s\r\n\r\nbefore" + fake_end + SMUGGLED + b"after\r\n.\r\n")
    assert raw.reply() == "250 2.0.0 Ok: queued as Q0001"
    assert raw.cmd("NOOP") == "250 2.0.0 OK"  # nothing else was pending
    [msg] = server.messages
    assert [r.address for r in msg.recipients] == ["b@example.net"]
    assert b"MAIL FROM:<evil@attacker.example>\r\n" in msg.data  # content, not a command
    assert msg.data.endswith(b"after\r\n")


@pytest.mark.parametrize("content", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\nb\n\r\n", b"\n\n\r\n"])
def test_stored_data_has_no_bare_cr_or_lf(server: Running, content: bytes) -> None:
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(b"Subject: s\r\n\r\n" + content + b".").startswith("250")
    data = server.messages[0].data
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


def test_any_mix_of_cr_lf_and_dots_is_one_message_with_crlf_only() -> None:
    """Property: whatever CR/LF/dot soup a client sends, it is one message, CRLF only."""
    server = Running(relay_config())
    raw = server.raw()
    raw.cmd("EHLO " + HELO)

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=40).map(lambda b: bytes(b"a.\r\nM"[x % 5] for x in b)))
    def one(content: bytes) -> None:
        before = len(server.messages)
        stuffed = (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]
        raw.cmd("MAIL FROM:<a@example.com>")
        raw.cmd("RCPT TO:<b@example.net>")
        raw.cmd("DATA")
        assert raw.cmd(stuffed + b"\r\n.").startswith("250 2.0.0 ")
        assert raw.cmd("NOOP") == "250 2.0.0 OK"
        assert len(server.messages) == before + 1
        data = server.messages[-1].data
        body = data.split(b" +0000\r\n", 1)[1]  # after Received:'s date line
        assert body == normalise_line_endings(content + b"\r\n")
        assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")

    try:
        one()
    finally:
        server.close()


def test_line_endings_are_normalised_to_crlf() -> None:
    assert normalise_line_endings(b"a\nb\rc\r\n\n") == b"a\r\nb\r\nc\r\n\r\n"
    same = b"untouched\r\n"
    assert normalise_line_endings(same) is same


def test_auto_submitted_only_looks_at_the_header_section() -> None:
    assert not is_auto_submitted(b"Subject: x\r\n\r\nAuto-Submitted: auto-replied\r\n")
    assert is_auto_submitted(b"Auto-Submitted:\r\n auto-replied\r\n\r\n")


def test_dot_stuffed_lines_are_unstuffed(server: Running) -> None:
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    raw.cmd(b"Subject: s\r\n\r\n..leading dot\r\n..\r\n.")
    assert server.messages[0].data.endswith(b"\r\n\r\n.leading dot\r\n.\r\n")


# --------------------------------------------------------------------------- DATA reading


def _body(msg: InboundMessage) -> bytes:
    return msg.data.split(b" +0000\r\n", 1)[1]  # after Received:'s date line


def _stuff(content: bytes) -> bytes:
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]


def test_lone_dot_right_after_data_is_an_empty_message(server: Running) -> None:
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(".") == "250 2.0.0 Ok: queued as Q0001"
    assert _body(server.messages[0]) == b""


@pytest.mark.parametrize(
    "content", [b"", b"\r\n", b"a\r\n", b"\r\r\n", b".\r\n", b"\r\n.\r\n", b"\r\r\r\r\n"], ids=repr
)
def test_end_of_data_is_found_when_it_arrives_byte_by_byte(server: Running, content: bytes) -> None:
    raw = server.raw()
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transaction(raw)
    raw.cmd("DATA")
    for byte in _stuff(content) + b".\r\n":
        raw.send(bytes([byte]))
        time.sleep(0.002)
    assert raw.reply() == "250 2.0.0 Ok: queued as Q0001"
    assert _body(server.messages[0]) == normalise_line_endings(content)


def test_message_larger_than_one_read_is_received_whole(server: Running) -> None:
    # Dots at line starts all over 1.2 MB: chunk edges fall on stuffed lines too.
    content = b"".join(b".%06d" % i + b"x" * (i % 300) + b"\r\n" for i in range(6000))
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(_stuff(content) + b".") == "250 2.0.0 Ok: queued as Q0001"
    assert _body(server.messages[0]) == content


def test_command_pipelined_after_the_final_dot_is_a_command(server: Running) -> None:
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    raw.send(BODY + b".\r\nNOOP\r\n")
    assert raw.reply() == "250 2.0.0 Ok: queued as Q0001"
    assert raw.reply() == "250 2.0.0 OK"
    assert server.messages[0].data.endswith(BODY)


def test_big_message_over_the_size_limit_gets_552_after_its_end(
    start: Callable[..., Running],
) -> None:
    server = start(max_message_size=100_000)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd((b"y" * 998 + b"\r\n") * 1000 + b".").startswith("552 5.3.4 ")
    assert server.messages == []
    assert raw.cmd("NOOP") == "250 2.0.0 OK"  # the rest of the data was not taken as commands


def test_flood_of_bare_cr_is_one_message(start: Callable[..., Running]) -> None:
    server = start(max_message_size=1000, max_line_length=8000)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(b"\r" * 5000 + b"\r\n.").startswith("552 5.3.4 ")
    transaction(raw)
    raw.cmd("DATA")
    assert raw.cmd(b"\r" * 500 + b"\r\n.").startswith("250 2.0.0 ")
    assert _body(server.messages[0]) == b"\r\n" * 501


def test_pipelined_replies_leave_in_one_segment(server: Running) -> None:
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    first = raw.sock.recv(4096)
    assert first == (b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    raw.send(BODY + b".\r\n")
    assert raw.sock.recv(4096) == b"250 2.0.0 Ok: queued as Q0001\r\n"


def test_quit_reply_is_written_before_the_close(server: Running) -> None:
    raw = server.raw()
    raw.send(b"EHLO " + HELO.encode() + b"\r\nNOOP\r\nQUIT\r\n")
    replies = [raw.reply() for _ in range(3)]
    assert replies[1:] == ["250 2.0.0 OK", "221 2.0.0 Bye"]
    assert raw.closed()


# --------------------------------------------------------------------------- suppression


@pytest.fixture
def suppression(start: Callable[..., Running], data_dir: Path) -> Iterator[Any]:
    """A started server whose recipient policy reads the real SQLite suppression list."""
    holder: dict[str, Any] = {}

    def make(**relay: Any) -> tuple[Running, AsyncSuppressionStore]:
        code = relay.get("suppressed_reply", "550 5.1.1")
        policy = SuppressionPolicy(SuppressionStore.open(data_dir), reply=code)
        server = start(policy=policy, **relay)
        holder["store"] = server.call(AsyncSuppressionStore.open(data_dir))
        holder["server"], holder["policy"] = server, policy
        return server, holder["store"]

    yield make
    if "store" in holder:
        holder["server"].call(holder["store"].close())
        holder["policy"].close()


def test_suppressed_recipient_gets_550_5_1_1_saying_why_and_since_when(suppression: Any) -> None:
    server, store = suppression()
    server.call(
        store.record(
            "Gone@Example.NET", "userunknown", source="smtp-reply", actor="relay",
            status="5.1.1", reply_code="550",
            diagnostic="550 5.1.1 <gone@example.net>: no such\r\nuser",
        )
    )  # fmt: skip
    entry = server.call(store.lookup("gone@example.net"))
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.first_seen))
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com>")
    assert raw.cmd("RCPT TO:<GONE@example.net>") == (
        "550 5.1.1 <gone@example.net>: recipient suppressed by smtpguard: userunknown "
        f"since {since} (550 5.1.1 <gone@example.net>: no such user)"
    )
    assert raw.cmd("RCPT TO:<here@example.net>") == "250 2.1.5 Ok"
    raw.cmd("DATA")
    raw.cmd(BODY + b".")
    assert [r.address for r in server.messages[0].recipients] == ["here@example.net"]


def test_suppressed_reply_code_is_configurable(suppression: Any) -> None:
    server, store = suppression(suppressed_reply="554 5.7.1")
    server.call(store.record("x@example.net", "manual", source="manual", actor="cli:test"))
    raw = server.raw()
    transaction(raw, rcpts=())
    assert raw.cmd("RCPT TO:<x@example.net>").startswith(
        "554 5.7.1 <x@example.net>: recipient suppressed by smtpguard: manual since "
    )


def test_suppression_lookup_failure_gets_451_4_3_0_for_that_recipient(
    start: Callable[..., Running],
) -> None:
    class Failing(AcceptAll):
        def check(self, sender: str, recipient: str, client: Client, auth: bool) -> Decision:
            if recipient.startswith("broken"):
                raise sqlite3.OperationalError("disk I/O error")
            return ACCEPT

    server = start(policy=Failing())
    raw = server.raw()
    transaction(raw, rcpts=("<ok@example.net>",))
    assert raw.cmd("RCPT TO:<broken@example.net>").startswith("451 4.3.0 ")
    raw.cmd("DATA")
    raw.cmd(BODY + b".")
    assert [r.address for r in server.messages[0].recipients] == ["ok@example.net"]


# --------------------------------------------------------------------------- commit


def test_250_only_after_enqueue_resolves(start: Callable[..., Running]) -> None:
    committed = threading.Event()
    release: dict[str, asyncio.Event] = {}

    async def slow_enqueue(msg: InboundMessage) -> str:
        release["event"] = asyncio.Event()
        await release["event"].wait()
        committed.set()
        return "Q1"

    server = start(enqueue=slow_enqueue)
    raw = server.raw()
    transaction(raw)
    raw.cmd("DATA")
    raw.send(BODY + b".\r\n")
    readable, _, _ = select.select([raw.sock], [], [], 0.5)
    assert readable == []  # no reply while the commit is pending
    server.loop.call_soon_threadsafe(lambda: release["event"].set())
    assert raw.reply() == "250 2.0.0 Ok: queued as Q1"
    assert committed.is_set()


def test_enqueue_failure_gets_451_4_3_0_never_250(start: Callable[..., Running]) -> None:
    async def failing(msg: InboundMessage) -> str:
        raise RuntimeError("queue unavailable")

    server = start(enqueue=failing)
    with server.smtp() as c:
        c.ehlo()
        c.mail("<a@example.com>")
        c.rcpt("<b@example.net>")
        assert c.data(BODY) == (451, b"4.3.0 Temporary storage failure, try again")


def test_read_only_sqlite_queue_gets_451_4_3_0(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    db = tmp_path / "queue.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, sender TEXT, data BLOB)")
    holder: dict[str, aiosqlite.Connection] = {}

    async def enqueue(msg: InboundMessage) -> str:
        if "conn" not in holder:
            holder["conn"] = await aiosqlite.connect(f"file:{db}?mode=ro", uri=True)
        cur = await holder["conn"].execute(
            "INSERT INTO q (sender, data) VALUES (?, ?)", (msg.mail_from, msg.data)
        )
        await holder["conn"].commit()
        return str(cur.lastrowid)

    server = start(enqueue=enqueue)
    with server.smtp() as c:
        c.ehlo()
        c.mail("<a@example.com>")
        c.rcpt("<b@example.net>")
        assert c.data(BODY) == (451, b"4.3.0 Temporary storage failure, try again")
    server.call(holder["conn"].close())


def test_accepted_message_is_in_the_real_sqlite_queue(
    start: Callable[..., Running], data_dir: Path
) -> None:
    holder: dict[str, QueueStore] = {}

    async def enqueue(msg: InboundMessage) -> str:
        return await holder["queue"].enqueue(msg)

    server = start(enqueue=enqueue)
    holder["queue"] = server.call(QueueStore.open(data_dir))
    try:
        with server.smtp() as c:
            c.ehlo()
            c.mail("<a@example.com>")
            c.rcpt("<b@example.net>")
            code, text = c.data(BODY)
        assert code == 250
        qid = text.decode().removeprefix("2.0.0 Ok: queued as ")
        body = server.call(holder["queue"].body(parse_qid(qid)))
        assert body.startswith(b"Received: from client.test") and body.endswith(BODY)
    finally:
        server.call(holder["queue"].close())


def test_twenty_parallel_sessions_each_message_queued_once(server: Running) -> None:
    def send(n: int) -> None:
        with server.smtp() as c:
            for i in range(5):
                c.sendmail("a@example.com", [f"r{n}-{i}@example.net"], BODY)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    addresses = sorted(m.recipients[0].address for m in server.messages)
    assert addresses == sorted(f"r{n}-{i}@example.net" for n in range(20) for i in range(5))


def test_no_accepted_recipient_never_reaches_enqueue(start: Callable[..., Running]) -> None:
    server = start(trusted_networks=["192.0.2.0/24"])
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    raw.cmd("MAIL FROM:<a@example.com>")
    raw.cmd("RCPT TO:<b@example.net>")
    assert raw.cmd("DATA") == "554 5.5.1 Error: no valid recipients"
    assert server.messages == []


# --------------------------------------------------------------------------- shutdown


def test_stop_lets_a_transaction_finish_and_closes_idle_sessions(server: Running) -> None:
    busy, idle = server.raw(), server.raw()
    transaction(busy)
    idle.cmd("EHLO " + HELO)
    stopping = asyncio.run_coroutine_threadsafe(server.server.stop(5.0), server.loop)
    assert idle.reply() == "421 4.3.2 smtpguard.localdomain Service shutting down"
    assert busy.cmd("DATA").startswith("354")
    assert busy.cmd(BODY + b".") == "250 2.0.0 Ok: queued as Q0001"
    assert busy.reply().startswith("421 4.3.2 ")
    stopping.result(5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_stop_closes_sessions_still_busy_after_the_timeout(server: Running) -> None:
    busy = server.raw()
    transaction(busy)
    t0 = time.monotonic()
    server.call(server.server.stop(0.3))
    assert time.monotonic() - t0 < 3
    assert busy.closed()
