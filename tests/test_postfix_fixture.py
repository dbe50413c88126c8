"""The Postfix fixture itself: a real Postfix starts, relays to a loopback sink, stops.

The end-to-end tests (test_e2e_postfix.py) rely on these properties, so they are
checked here against a plain aiosmtpd sink, independent of smtpguard.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.fixtures.postfix import PostfixFactory
from tests.fixtures.postfix_instance import free_port, wait_port

pytestmark = pytest.mark.postfix


@dataclass
class Sink:
    """An aiosmtpd server collecting envelopes; ``reply`` is what it answers after DATA."""

    reply: str = "250 2.0.0 Ok"
    envelopes: list[Envelope] = field(default_factory=list)
    port: int = 0
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._arrived:
            self.envelopes.append(envelope)
            self._arrived.notify_all()
        return self.reply

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Envelope]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.envelopes) >= n, timeout), (
                f"sink got {len(self.envelopes)} of {n} messages in {timeout}s"
            )
            return list(self.envelopes)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(port=free_port())
    # server_hostname: aiosmtpd would otherwise call socket.getfqdn().
    controller = Controller(s, hostname="127.0.0.1", port=s.port, server_hostname="sink.test")
    controller.start()
    yield s
    controller.stop()


MESSAGE = (
    "From: <alice@sender.test>\r\nTo: <bob@example.test>\r\n"
    "Subject: fixture check\r\n\r\nhello through Postfix\r\n"
)


def test_postfix_accepts_on_its_own_loopback_port(postfix_factory: PostfixFactory, sink: Sink):
    pf = postfix_factory(sink.port)
    with socket.create_connection(("127.0.0.1", pf.port), timeout=5) as s:
        assert s.recv(512).startswith(b"220 " + pf.hostname.encode())


def test_postfix_relays_a_message_to_its_relayhost(postfix_factory: PostfixFactory, sink: Sink):
    pf = postfix_factory(sink.port)
    reply = pf.send("alice@sender.test", "bob@example.test", MESSAGE)
    assert reply.code == 250 and reply.queue_id, reply
    (env,) = sink.wait_for(1)
    assert env.mail_from == "alice@sender.test"
    assert env.rcpt_tos == ["bob@example.test"]
    assert b"hello through Postfix" in env.original_content
    pf.wait_log(rf"{reply.queue_id}: to=<bob@example.test>, relay=127\.0\.0\.1.*status=sent")


def test_postfix_defers_a_4xx_and_retries_within_seconds(
    postfix_factory: PostfixFactory, sink: Sink
):
    sink.reply = "451 4.3.0 try later"
    pf = postfix_factory(sink.port)
    reply = pf.send("alice@sender.test", "bob@example.test", MESSAGE)
    pf.wait_log(rf"{reply.queue_id}: .*status=deferred")
    assert reply.queue_id in pf.queue()
    sink.reply = "250 2.0.0 Ok"
    started = time.monotonic()
    pf.wait_log(rf"{reply.queue_id}: .*status=sent", timeout=30)
    assert time.monotonic() - started < 30
    assert "Mail queue is empty" in pf.queue()


def test_postfix_bounces_a_5xx_to_the_sender_via_the_transport_map(
    postfix_factory: PostfixFactory, sink: Sink
):
    """A relayhost 5xx makes Postfix write its own bounce; the transport map sends it elsewhere."""
    collector = Sink(port=free_port())
    controller = Controller(
        collector, hostname="127.0.0.1", port=collector.port, server_hostname="collector.test"
    )
    controller.start()
    try:
        sink.reply = "550 5.1.1 no such user"
        pf = postfix_factory(
            sink.port, transports={"sender.test": f"smtp:[127.0.0.1]:{collector.port}"}
        )
        reply = pf.send("alice@sender.test", "bob@example.test", MESSAGE)
        pf.wait_log(rf"{reply.queue_id}: to=<bob@example.test>.*status=bounced")
        (bounce,) = collector.wait_for(1)
        assert bounce.mail_from == "<>"  # aiosmtpd spells the null sender so
        assert bounce.rcpt_tos == ["alice@sender.test"]
        assert f"MAILER-DAEMON@{pf.hostname}".encode() in bounce.original_content
        assert b"550 5.1.1 no such user" in bounce.original_content
    finally:
        controller.stop()


def test_postfix_stops_and_frees_its_port(postfix_factory: PostfixFactory, sink: Sink):
    pf = postfix_factory(sink.port)
    pf.stop()
    assert not wait_port(pf.port, timeout=0.5)
