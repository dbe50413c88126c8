"""SendGrid's Signed Event Webhook: the documented events, signed with a test P-256 key."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smtpguard.config import WebhooksConfig
from smtpguard.errors import ConfigError
from smtpguard.intake.keys import load_ec_public_key
from smtpguard.intake.webhooks.app import make_app
from tests.fixtures.webhooks import RecordingSink

EVENTS = (Path(__file__).parent / "esp" / "sendgrid-events.json").read_bytes()
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
NOW = 1_796_983_200


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_base64(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as SendGrid's settings page shows it: base64 DER, no PEM armour."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def signed(key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int = NOW) -> dict[str, str]:
    signature = key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE: base64.b64encode(signature).decode(), TIMESTAMP: str(timestamp)}


@pytest.fixture
async def sendgrid(private_key: ec.EllipticCurvePrivateKey, listen: Any) -> Any:
    sink = RecordingSink()
    cfg = WebhooksConfig(sendgrid_public_key=public_key_base64(private_key))
    listener = await listen(make_app(cfg, sink, clock=lambda: NOW + 30.0))
    listener.sink = sink
    return listener


async def test_documented_events_become_verdicts(sendgrid: Any, private_key: Any) -> None:
    status, payload, _ = await sendgrid.post("/sendgrid", EVENTS, signed(private_key, EVENTS))
    assert (status, payload["verdicts"]) == (200, 5)
    got = {v.recipient: (v.reason, v.bounce, v.suppress) for v in sendgrid.sink.verdicts}
    assert got == {
        # "500 unknown recipient", classified by SendGrid as an invalid address
        "example@test.com": ("userunknown", "hard", True),
        # a blocklist refusal is about the sender, never the recipient
        "blocked@test.com": ("blocked", "hard", False),
        # SendGrid did not even try: its own list, not evidence about the address
        "dropped@test.com": ("suppressed", "hard", False),
        "complainer@test.com": ("feedback", "none", False),
        "delivered@test.com": ("delivered", "none", False),
    }
    # The spam report is a feedback-loop complaint passed on: arf evidence.
    evidence = [
        (e.kind, e.actor, e.note, [v.recipient for v in vs]) for vs, e in sendgrid.sink.calls
    ]
    assert evidence[0] == ("arf", "webhook:sendgrid", "6 events", ["complainer@test.com"])
    assert evidence[1][:3] == ("webhook", "webhook:sendgrid", "6 events")
    bounce = sendgrid.sink.calls[1][0][0]
    assert bounce.message_id == "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"


async def test_bad_signature_is_403_and_changes_nothing(sendgrid: Any, private_key: Any) -> None:
    headers = signed(private_key, EVENTS)
    tampered = EVENTS.replace(b"example@test.com", b"someone@test.com")
    status, _, _ = await sendgrid.post("/sendgrid", tampered, headers)
    assert status == 403
    assert sendgrid.sink.calls == []


async def test_signature_by_another_key_is_403(sendgrid: Any) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    status, _, _ = await sendgrid.post("/sendgrid", EVENTS, signed(other, EVENTS))
    assert status == 403


async def test_unsigned_request_is_403(sendgrid: Any) -> None:
    status, payload, _ = await sendgrid.post("/sendgrid", EVENTS)
    assert status == 403 and "unsigned" in payload["error"]


async def test_replayed_old_request_is_403(sendgrid: Any, private_key: Any) -> None:
    old = NOW - 3600
    status, payload, _ = await sendgrid.post("/sendgrid", EVENTS, signed(private_key, EVENTS, old))
    assert status == 403 and "s ago" in payload["error"]


async def test_signature_that_is_not_base64_is_403(sendgrid: Any) -> None:
    status, _, _ = await sendgrid.post("/sendgrid", EVENTS, {SIGNATURE: "%%%", TIMESTAMP: str(NOW)})
    assert status == 403


async def test_signed_body_that_is_not_json_is_400(sendgrid: Any, private_key: Any) -> None:
    body = b"not json"
    status, _, _ = await sendgrid.post("/sendgrid", body, signed(private_key, body))
    assert status == 400


async def test_signed_object_instead_of_an_array_is_400(sendgrid: Any, private_key: Any) -> None:
    body = json.dumps({"event": "bounce"}).encode()
    status, payload, _ = await sendgrid.post("/sendgrid", body, signed(private_key, body))
    assert status == 400 and "array" in payload["error"]


async def test_deferred_event_is_soft(sendgrid: Any, private_key: Any) -> None:
    body = json.dumps(
        [
            {
                "email": "x@test.com",
                "event": "deferred",
                "response": "452 4.2.2 mailbox full",
                "timestamp": NOW,
            }
        ]
    ).encode()
    assert (await sendgrid.post("/sendgrid", body, signed(private_key, body)))[0] == 200
    (v,) = sendgrid.sink.verdicts
    assert (v.reason, v.bounce, v.suppress) == ("mailboxfull", "soft", False)


def test_public_key_loads_from_pem_too(private_key: Any) -> None:
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        load_ec_public_key(pem.decode()).public_numbers()
        == private_key.public_key().public_numbers()
    )


def test_config_refuses_a_key_that_is_not_p256(tmp_path: Path) -> None:
    from smtpguard import config

    p = tmp_path / "smtpguard.toml"
    p.write_text('[webhooks]\nsendgrid_public_key = "bm90IGEga2V5"\n')
    with pytest.raises(
        ConfigError, match=r"webhooks\.sendgrid_public_key: expected a base64 or PEM"
    ):
        config.load(p)


def test_signature_check_costs_bounded_time() -> None:
    """A garbage signature of any length is refused without work proportional to it."""
    from smtpguard.intake.webhooks.request import Refused
    from smtpguard.intake.webhooks.sendgrid import verify_signature

    key = load_ec_public_key(public_key_base64(ec.generate_private_key(ec.SECP256R1())))
    start = time.perf_counter()
    with pytest.raises(Refused):
        verify_signature(key, "A" * 1_000_000, str(NOW), b"[]", now=NOW, max_age=60)
    assert time.perf_counter() - start < 0.5


UNSUBSCRIBES = (Path(__file__).parent / "esp" / "sendgrid-unsubscribe-events.json").read_bytes()


async def test_documented_unsubscribe_events_are_unsubscribes(
    sendgrid: Any, private_key: Any
) -> None:
    status, payload, _ = await sendgrid.post(
        "/sendgrid", UNSUBSCRIBES, signed(private_key, UNSUBSCRIBES)
    )
    assert (status, payload["verdicts"]) == (200, 2)
    ((verdicts, evidence),) = sendgrid.sink.calls
    assert [(v.recipient, v.reason, v.bounce, v.diagnostic) for v in verdicts] == [
        ("unsubscribed@test.com", "unsubscribe", "none", "SendGrid unsubscribe event"),
        (
            "group-unsubscribed@test.com", "unsubscribe", "none",
            "SendGrid group_unsubscribe event (unsubscribe group 10)",
        ),
    ]  # fmt: skip
    # A resubscribe lifts nothing: a webhook never removes a suppression.
    assert (evidence.kind, evidence.actor) == ("webhook", "webhook:sendgrid")


async def test_a_forged_unsubscribe_is_403_and_changes_nothing(
    sendgrid: Any, private_key: Any
) -> None:
    forged = UNSUBSCRIBES.replace(b"unsubscribed@test.com", b"victim@test.com")
    status, _, _ = await sendgrid.post("/sendgrid", forged, signed(private_key, UNSUBSCRIBES))
    assert status == 403
    assert sendgrid.sink.calls == []
