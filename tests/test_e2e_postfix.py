"""The production path with a REAL Postfix: Postfix -> smtpguard -> test MX.

Wiring, as in production (conf/postfix/main.cf.snippet) but on loopback ports:

    client --SMTP--> Postfix (relayhost = [127.0.0.1]:relay) --> smtpguard serve --MX--> test MX
                       ^    |  transport map: sender.test -> sender's MX                example.test
                       |    +------------------------------------------------> sender's MX
                       +---- smtpguard's own DSNs (dsn.next_hop = Postfix) ----+

The loopback DNS server publishes ``example.test MX 10 mx.example.test`` -> 127.0.0.1;
every MX is reached on the test MX's port. Mail back to the sender (Postfix's
bounces and smtpguard's DSNs, both through Postfix) ends at a second test MX, so
the test can read what the sender would get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from smtpguard.store.suppression import SuppressionEntry, SuppressionStore
from tests.fixtures.mx import ReceivedMessage, TestMx
from tests.fixtures.postfix import PostfixFactory, PostfixInstance
from tests.fixtures.postfix_instance import free_port
from tests.fixtures.relay import RelayProcess, route_to_mx

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

SENDER = "alice@sender.test"


def message(rcpt: str, subject: str) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@sender.test>\r\n\r\n"
        f"Body of {subject}.\r\n"
    ).encode()


@dataclass
class Chain:
    postfix: PostfixInstance
    relay: RelayProcess
    mx: TestMx  # the Internet's MX for example.test
    sender_mx: TestMx  # where mail to the sender (bounces, DSNs) ends

    def suppression(self, address: str, timeout: float = 15.0) -> SuppressionEntry:
        """Wait (bounded) until the relay has put ``address`` on its suppression list."""
        deadline = time.monotonic() + timeout
        while True:
            with SuppressionStore.open(self.relay.data_dir) as store:
                entry = store.lookup(address)
            if entry is not None:
                return entry
            assert time.monotonic() < deadline, (
                f"{address} not suppressed within {timeout}s; relay log:\n"
                f"{self.relay.log()[-3000:]}"
            )
            time.sleep(0.1)


@pytest.fixture
def chain(
    postfix_factory: PostfixFactory,
    start_relay: Callable[..., RelayProcess],
    dns_server: Any,
    test_mx: TestMx,
    make_test_mx: Callable[..., TestMx],
) -> Chain:
    route_to_mx(dns_server, "example.test")
    sender_mx = make_test_mx(hostname="mx.sender.test")
    # Postfix's port is chosen first: the relay hands its DSNs to it (dsn.next_hop),
    # and Postfix needs the relay's port as its relayhost. Both ports come from
    # outside the ephemeral range (see free_port), so no outgoing connection takes them.
    postfix_port = free_port()
    relay = start_relay(
        relay={"listen": f"127.0.0.1:{free_port()}"},
        dsn={"next_hop": f"127.0.0.1:{postfix_port}"},
    )
    postfix = postfix_factory(
        relay.port,
        port=postfix_port,
        transports={"sender.test": f"smtp:[127.0.0.1]:{sender_mx.port}"},
    )
    return Chain(postfix=postfix, relay=relay, mx=test_mx, sender_mx=sender_mx)


def relayed_to_smtpguard(chain: Chain, queue_id: str, rcpt: str, status: str) -> str:
    """The maillog line of Postfix's delivery attempt to smtpguard for one recipient."""
    line = chain.postfix.wait_log(
        rf"^.*{queue_id}: to=<{rcpt}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{chain.relay.port},"
        rf".* status={status} .*$"
    )
    return line.group(0)


def wait_message(
    mx: TestMx, match: Callable[[ReceivedMessage], bool], timeout: float = 20.0
) -> ReceivedMessage:
    """The one message ``mx`` received that ``match`` accepts, waiting (bounded) for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in list(mx.messages) if match(m)]
        if found:
            assert len(found) == 1, f"{len(found)} matching messages"
            return found[0]
        assert time.monotonic() < deadline, (
            f"no matching message within {timeout}s; got "
            f"{[(m.mail_from, str(m.message()['From'])) for m in mx.messages]}"
        )
        time.sleep(0.1)


def delivery_status(msg: ReceivedMessage) -> str:
    """The message/delivery-status part of a DSN (RFC 3464), as text."""
    for part in msg.message().walk():
        if part.get_content_type() == "message/delivery-status":
            return "\n".join(str(block) for block in part.get_payload())
    raise AssertionError(f"no message/delivery-status part in:\n{msg.data.decode()}")


def test_message_submitted_to_postfix_reaches_the_mx_through_smtpguard(chain: Chain):
    reply = chain.postfix.send(SENDER, "bob@example.test", message("bob@example.test", "hello"))
    assert reply.code == 250, reply
    (got,) = chain.mx.wait_for(1, timeout=20)
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["bob@example.test"]
    received = got.message().get_all("Received")
    # Newest first: smtpguard's hop on top of Postfix's.
    assert "(smtpguard)" in received[0]
    assert f"by {chain.postfix.hostname} (Postfix)" in received[1]
    assert got.data.endswith(b"Body of hello.\r\n")
    relayed_to_smtpguard(chain, reply.queue_id, "bob@example.test", "sent")


def test_mx_550_5_1_1_suppresses_and_the_next_message_bounces_at_postfix_relay_step(
    chain: Chain,
):
    gone = "gone@example.test"
    chain.mx.script(gone, f"550 5.1.1 <{gone}>: Recipient address rejected: User unknown")
    first = chain.postfix.send(SENDER, gone, message(gone, "first"))
    relayed_to_smtpguard(chain, first.queue_id, gone, "sent")  # smtpguard took it: 250
    entry = chain.suppression(gone)
    assert (entry.reason, entry.reply_code, entry.status) == ("userunknown", "550", "5.1.1")
    assert chain.mx.rcpt_attempts(gone) == 1

    second = chain.postfix.send(SENDER, gone, message(gone, "second"))
    assert second.code == 250, second  # Postfix accepts; its relay step is refused
    refused = relayed_to_smtpguard(chain, second.queue_id, gone, "bounced")
    assert "dsn=5.1.1" in refused
    assert "said: 550 5.1.1" in refused and "suppressed" in refused
    assert "(in reply to RCPT TO command)" in refused
    # Postfix wrote the bounce itself (bounce daemon), not smtpguard.
    notice = chain.postfix.wait_log(
        rf"{second.queue_id}: sender non-delivery notification: (\w+)"
    ).group(1)
    chain.postfix.wait_log(rf"{notice}: to=<{SENDER}>, relay=127\.0\.0\.1.*status=sent")
    bounce = wait_message(
        chain.sender_mx,
        lambda m: (
            f"MAILER-DAEMON@{chain.postfix.hostname}" in str(m.message()["From"])
            and "second@sender.test" in m.data.decode(errors="replace")
        ),
    )
    assert bounce.mail_from == ""
    assert bounce.rcpt_tos == [SENDER]
    status = delivery_status(bounce)
    assert f"Reporting-MTA: dns; {chain.postfix.hostname}" in status
    assert f"Final-Recipient: rfc822; {gone}" in status
    assert "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1" in status
    # The suppressed recipient never reached the MX a second time.
    assert chain.mx.rcpt_attempts(gone) == 1


def test_smtpguard_dsn_for_a_hard_bounce_reaches_the_sender_through_postfix(chain: Chain):
    gone = "gone@example.test"
    chain.mx.script(gone, f"550 5.1.1 <{gone}>: User unknown")
    chain.postfix.send(SENDER, gone, message(gone, "first"))
    (dsn,) = chain.sender_mx.wait_for(1, timeout=20)
    assert dsn.mail_from == ""
    assert dsn.rcpt_tos == [SENDER]
    status = delivery_status(dsn)
    assert "Reporting-MTA: dns; relay.test" in status  # smtpguard's, not Postfix's
    assert "Action: failed" in status
    assert "Status: 5.1.1" in status
    assert f"smtp; 550 5.1.1 <{gone}>: User unknown" in status
    # It entered Postfix from smtpguard and left through the transport map.
    chain.postfix.wait_log(rf"to=<{SENDER}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                           rf"{chain.sender_mx.port},.*status=sent")  # fmt: skip


def test_mx_452_4_2_2_is_retried_by_smtpguard_then_delivered(chain: Chain):
    full = "full@example.test"
    chain.mx.script(full, ["452 4.2.2 Mailbox full", "250 2.1.5 Ok"])
    reply = chain.postfix.send(SENDER, full, message(full, "retry me"))
    (got,) = chain.mx.wait_for(1, timeout=20)
    assert got.rcpt_tos == [full]
    assert chain.mx.rcpt_attempts(full) == 2
    # Postfix handed it over once; the retry was smtpguard's, and nobody bounced.
    relayed_to_smtpguard(chain, reply.queue_id, full, "sent")
    assert chain.postfix.log().count(f"{reply.queue_id}: to=<{full}>") == 1
    assert chain.sender_mx.messages == []
    assert chain.postfix.queue().strip().startswith("Mail queue is empty")
