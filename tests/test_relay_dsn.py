"""DSNs through a real relay: one per message and round, bounded, built whatever the message.

The next hop refuses the recipients; the DSNs arrive at the collecting test MX
that stands for ``dsn.next_hop``. Time bounds are generous for a shared
2-CPU machine and far below what building from a parsed MIME tree cost
(a 13.6 MB message of 100,000 parts: tens of seconds, on the event loop).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from smtpguard.config import Config
from smtpguard.relay import outcome as outcome_module
from smtpguard.relay.outcome import Attempt, OutcomeHandler
from smtpguard.store.messages import Claim, InboundMessage, Recipient
from smtpguard.store.queue import QueueStore
from tests.fixtures.relay import route_to_mx
from tests.test_dsn import many_parts, nested_message, returned_part
from tests.test_relay_bounces import delivery_status, dsn_count, suppressed
from tests.test_relay_delivery import wait_states

pytestmark = pytest.mark.slow

HEADERS = b"From: s@example.org\r\nTo: list@example.org\r\nSubject: big\r\n"


def test_one_message_to_three_domains_all_refused_gives_one_bounded_dsn(
    start_relay, dns_server, test_mx, relay_dsn_mx
):
    domains = ("one.example", "two.example", "three.example")
    route_to_mx(dns_server, *domains)
    rcpts = [f"gone@{d}" for d in domains]
    for r in rcpts:
        test_mx.script(r, f"550 5.1.1 <{r}>: User unknown")
    relay = start_relay()
    body = HEADERS + b"\r\n" + (b"y" * 998 + b"\r\n") * 1000  # 1 MB
    relay.send("s@example.org", rcpts, body, mail_options=["RET=FULL"])
    (dsn,) = relay_dsn_mx.wait_for(1)
    wait_states(relay.data_dir, dict.fromkeys(rcpts, "bounced"))
    time.sleep(1.0)  # a second DSN would be on its way by now
    assert len(relay_dsn_mx.messages) == 1 and dsn_count(relay.data_dir) == 1
    status = delivery_status(dsn)
    assert sorted(re.findall(r"Final-Recipient: rfc822; (\S+)", status)) == sorted(rcpts)
    assert len(dsn.data) < 10_000  # the 1 MB original comes back as its header section
    assert b"Content-Type: text/rfc822-headers" in returned_part(dsn.data)


def test_failures_in_one_round_share_a_dsn_with_deliveries_recorded_at_once(
    start_relay, dns_server, test_mx, relay_dsn_mx
):
    route_to_mx(dns_server, "ok.example", "gone.example")
    test_mx.script("x@gone.example", "550 5.1.1 <x@gone.example>: User unknown")
    relay = start_relay()
    relay.send("s@example.org", ["a@ok.example", "x@gone.example", "b@ok.example"], HEADERS)
    (dsn,) = relay_dsn_mx.wait_for(1)
    wait_states(
        relay.data_dir,
        {"a@ok.example": "delivered", "b@ok.example": "delivered", "x@gone.example": "bounced"},
    )
    assert re.findall(r"Final-Recipient: rfc822; (\S+)", delivery_status(dsn)) == ["x@gone.example"]


def bounce_with_ret_full(start_relay, dns_server, test_mx, original: bytes):  # type: ignore[no-untyped-def]
    """Send ``original`` with RET=FULL to a recipient the MX refuses; the relay."""
    route_to_mx(dns_server, "example.com")
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay()
    relay.send("s@example.org", ["gone@example.com"], original, mail_options=["RET=FULL"],
               timeout=60)  # fmt: skip
    return relay


def test_a_message_nested_450_levels_deep_with_ret_full_bounces_with_a_dsn(
    start_relay, dns_server, test_mx, relay_dsn_mx
):
    original = nested_message(450)
    relay = bounce_with_ret_full(start_relay, dns_server, test_mx, original)
    (dsn,) = relay_dsn_mx.wait_for(1, timeout=10)
    assert returned_part(dsn.data).endswith(original)  # returned whole: under the limit
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})


def test_a_13_mb_message_of_100000_parts_bounces_with_a_dsn_in_seconds(
    start_relay, dns_server, test_mx, relay_dsn_mx
):
    relay = bounce_with_ret_full(start_relay, dns_server, test_mx, many_parts(100_000))
    sent = time.monotonic()
    (dsn,) = relay_dsn_mx.wait_for(1, timeout=10)
    assert time.monotonic() - sent < 10
    assert len(dsn.data) < 10_000
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})


# ---------------------------------------------------------------------- when building fails


async def claim_one(
    tmp_path: Path, *rcpts: str, ret: str = "FULL"
) -> tuple[Config, QueueStore, Claim]:
    cfg = Config().with_overrides(store={"data_dir": str(tmp_path)})
    store = await QueueStore.open(tmp_path)
    message_id = await store.enqueue_id(
        InboundMessage(
            mail_from="s@example.org", recipients=tuple(Recipient(r) for r in rcpts),
            data=HEADERS + b"\r\nbody\r\n", ret=ret, received_at=time.time(),
        )
    )  # fmt: skip
    (claim,) = await store.claim([message_id])
    return cfg, store, claim


async def test_a_reply_after_data_speaks_only_for_its_own_transaction(tmp_path: Path) -> None:
    """Failures held for the message's one DSN are judged with their own transaction's
    recipients: a one-recipient transaction's 550 5.1.1 after DATA still suppresses."""
    from smtpguard.classify import default_classifier
    from smtpguard.policy import open_sink

    cfg, store, claim = await claim_one(tmp_path, "a@one.example", "b@two.example")
    sink = await open_sink(cfg, writer=store.writer)
    a, b = claim.recipients
    refused = default_classifier().reply(550, "5.1.1 User unknown", stage="data",
                                         recipient=a.address)  # fmt: skip
    await OutcomeHandler(cfg, store, sink=sink).apply(
        claim.message,
        [
            Attempt(a, refused, "550", "5.1.1 User unknown", "mx.one", transaction=1),
            Attempt(b, None, "250", "2.0.0 Ok", "mx.two", transaction=2),
        ],
    )
    await sink.close()
    await store.close()
    assert suppressed(tmp_path, "a@one.example") is not None
    assert suppressed(tmp_path, "b@two.example") is None


async def bounce_one(tmp_path: Path) -> QueueStore:
    """Queue a message, claim it and apply a hard bounce through a real OutcomeHandler."""
    from smtpguard.classify import default_classifier

    cfg, store, claim = await claim_one(tmp_path, "gone@example.com")
    rcpt = claim.recipients[0]
    verdict = default_classifier().reply(
        550, "5.1.1 <gone@example.com>: User unknown", stage="rcpt", recipient=rcpt.address
    )
    await OutcomeHandler(cfg, store).apply(
        claim.message, [Attempt(rcpt, verdict, "550", "5.1.1 <gone@example.com>: User unknown")]
    )
    return store


def queue_rows(tmp_path: Path) -> tuple[list[tuple[str, str]], list[bytes]]:
    conn = sqlite3.connect(tmp_path / "smtpguard.db")
    try:
        states = conn.execute("SELECT address, state FROM queue_recipients ORDER BY id").fetchall()
        dsns = [
            bytes(r[0])
            for r in conn.execute(
                "SELECT data FROM queue_bodies JOIN queue_messages ON id = message_id"
                " WHERE kind = 'dsn'"
            )
        ]
        return states, dsns
    finally:
        conn.close()


async def test_a_dsn_that_cannot_be_built_as_asked_is_sent_with_the_headers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = outcome_module.build_dsn

    def fails_for_full(**kw):  # type: ignore[no-untyped-def]
        if kw["ret"] == "FULL":
            raise RecursionError("maximum recursion depth exceeded")
        return real(**kw)

    monkeypatch.setattr(outcome_module, "build_dsn", fails_for_full)
    store = await bounce_one(tmp_path)
    await store.close()
    states, (dsn,) = queue_rows(tmp_path)
    assert states[0] == ("gone@example.com", "bounced")
    assert b"Content-Type: text/rfc822-headers" in returned_part(dsn)


async def test_a_bounce_whose_original_is_gone_still_gets_a_dsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreadable(self, message_id, limit):  # type: ignore[no-untyped-def]
        raise OSError("disk I/O error")

    monkeypatch.setattr(QueueStore, "body_head", unreadable)
    store = await bounce_one(tmp_path)
    await store.close()
    states, (dsn,) = queue_rows(tmp_path)
    assert states[0] == ("gone@example.com", "bounced")
    assert b"could not be read" in dsn
