"""Returned DSNs end to end through a REAL Postfix, wired as conf/postfix/bounce-domain.cf.snippet.

    client -> Postfix -(relayhost)-> smtpguard -(MAIL FROM:<b+TOKEN@bounce.example.net>)-> MX
                                                                                          |
    smtpguard intake.listen <-(transport_maps: bounce domain)- Postfix <-- DSN to the return path

The MX accepts the message (250) and only later mails a DSN back to the envelope
sender it saw, through Postfix, as a receiving server does when delivery fails after
it accepted. Postfix takes the bounce domain from any client (relay_domains) and hands
it to the intake listener; the original recipient ends suppressed with the DSN as
evidence. The same DSN to a forged return path suppresses nobody.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtpguard.relay.dsn import DsnRecipient, build_dsn
from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.mx import TestMx
from tests.fixtures.postfix import PostfixFactory
from tests.fixtures.postfix_instance import free_port
from tests.fixtures.relay import RelayProcess, route_to_mx

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

SENDER = "alice@sender.test"
BOUNCE_DOMAIN = "bounce.example.net"


def dsn_from_the_mx(return_path: str, recipient: str) -> bytes:
    """What the receiving server mails back after accepting, then failing, delivery."""
    report = DsnRecipient(
        address=recipient, orcpt="", action="failed", status="5.1.1",
        diagnostic=f"smtp; 550 5.1.1 <{recipient}>: mailbox does not exist",
        remote_mta="mailstore.example.test", last_attempt=time.time(),
    )  # fmt: skip
    return build_dsn(
        original=f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: hello\r\n\r\nhi\r\n".encode(),
        mail_from=return_path, envid="", ret="HDRS", recipients=[report],
        reporting_mta="mx.example.test", arrival_date=time.time() - 5,
    )  # fmt: skip


@pytest.fixture
def chain(
    postfix_factory: PostfixFactory,
    start_relay: Callable[..., RelayProcess],
    dns_server: Any,
    test_mx: TestMx,
    make_test_mx: Callable[..., TestMx],
    tmp_path: Path,
) -> Any:
    route_to_mx(dns_server, "example.test")
    sender_mx = make_test_mx(hostname="mx.sender.test")
    key = tmp_path / "verp.key"
    key.write_bytes(b"an e2e return path key, 32 bytes")
    key.chmod(0o600)
    postfix_port, intake_port = free_port(), free_port()
    relay = start_relay(
        relay={"listen": f"127.0.0.1:{free_port()}"},
        dsn={"next_hop": f"127.0.0.1:{postfix_port}"},
        intake={"bounce_domain": BOUNCE_DOMAIN, "secret_file": str(key),
                "listen": f"127.0.0.1:{intake_port}"},
    )  # fmt: skip
    postfix = postfix_factory(
        relay.port,
        port=postfix_port,
        transports={
            "sender.test": f"smtp:[127.0.0.1]:{sender_mx.port}",
            BOUNCE_DOMAIN: f"smtp:[127.0.0.1]:{intake_port}",
        },
        # As conf/postfix/bounce-domain.cf.snippet: the bounce domain is a relay
        # domain (mail for it accepted from anyone), nothing else is relayed.
        main={
            "relay_domains": BOUNCE_DOMAIN,
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        },
    )
    return postfix, relay, test_mx


def wait_suppressed(relay: RelayProcess, address: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with SuppressionStore.open(relay.data_dir) as store:
            entry = store.lookup(address)
            history = store.history(address)
        if entry is not None or history:
            return entry, history
        assert time.monotonic() < deadline, (
            f"nothing recorded for {address}:\n{relay.log()[-3000:]}"
        )
        time.sleep(0.1)


def test_dsn_mailed_back_through_postfix_suppresses_the_recipient(chain: Any) -> None:
    postfix, relay, mx = chain
    rcpt = "bob@example.test"
    reply = postfix.send(SENDER, rcpt, f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhi\r\n")
    assert reply.code == 250, reply
    (got,) = mx.wait_for(1, timeout=20)
    return_path = got.mail_from
    assert return_path.startswith("b+") and return_path.endswith("@" + BOUNCE_DOMAIN)

    bounce = postfix.send("", return_path, dsn_from_the_mx(return_path, rcpt))
    assert bounce.code == 250, bounce
    postfix.wait_log(
        rf"to=<{re.escape(return_path)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+,"
        r".*status=sent \(250 2\.0\.0 Ok: recorded\)"
    )
    entry, history = wait_suppressed(relay, rcpt)
    assert entry is not None
    assert (entry.reason, entry.status, entry.evidence) == ("userunknown", "5.1.1", "dsn-verified")
    assert "550 5.1.1" in entry.diagnostic
    assert history[-1].actor == "intake"


def test_same_dsn_to_a_forged_return_path_suppresses_nobody(chain: Any) -> None:
    postfix, relay, _mx = chain
    rcpt = "carol@example.test"
    forged = f"b+{'b' * 32}@{BOUNCE_DOMAIN}"
    bounce = postfix.send("", forged, dsn_from_the_mx(forged, rcpt))
    assert bounce.code == 250, bounce
    entry, history = wait_suppressed(relay, rcpt)
    assert entry is None
    assert [(h.action, h.evidence) for h in history] == [("recorded", "dsn-unverified")]
