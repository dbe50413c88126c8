"""Webhooks into the real policy sink and SQLite store: what ends on the suppression list."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smtpguard.config import Config
from smtpguard.intake.webhooks.app import make_app
from smtpguard.policy import open_sink
from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.net import free_port
from tests.fixtures.relay import LISTENING, REPO, write_config

SAMPLES = Path(__file__).parent / "esp"
EVENTS = (SAMPLES / "sendgrid-events.json").read_bytes()
PASSWORD = "a long webhook password"


def signed(key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int) -> dict[str, str]:
    signature = key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
    }


def public_key(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def basic(password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"pm:{password}".encode()).decode()}


async def test_sendgrid_events_end_on_the_list_by_the_evidence_rules(
    tmp_path: Path, listen: Any
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cfg = Config().with_overrides(
        store={"data_dir": str(tmp_path / "var")},
        webhooks={"sendgrid_public_key": public_key(key)},
    )
    sink = await open_sink(cfg)
    try:
        listener = await listen(make_app(cfg.webhooks, sink))
        now = int(time.time())
        status, payload, _ = await listener.post("/sendgrid", EVENTS, signed(key, EVENTS, now))
        assert status == 200, payload
        forged = EVENTS.replace(b"blocked@test.com", b"victim@test.com")
        assert (await listener.post("/sendgrid", forged, signed(key, EVENTS, now)))[0] == 403
    finally:
        await sink.close()
    with SuppressionStore.open(tmp_path / "var") as store:
        bounced = store.lookup("example@test.com")
        complained = store.lookup("complainer@test.com")
        assert bounced is not None and (bounced.reason, bounced.evidence) == (
            "userunknown",
            "webhook",
        )
        assert complained is not None and (complained.reason, complained.evidence) == (
            "complaint",
            "arf",
        )
        for address in (
            "blocked@test.com",
            "dropped@test.com",
            "delivered@test.com",
            "victim@test.com",
        ):
            assert store.lookup(address) is None, address
        (added,) = store.history("example@test.com")
        assert added.actor == "webhook:sendgrid"


async def test_unsubscribes_end_on_the_list_with_webhook_evidence(
    tmp_path: Path, listen: Any
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    secret = tmp_path / "postmark.pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    cfg = Config().with_overrides(
        store={"data_dir": str(tmp_path / "var")},
        webhooks={"sendgrid_public_key": public_key(key), "postmark_user": "pm",
                  "postmark_password_file": str(secret)},
    )  # fmt: skip
    unsubscribes = (SAMPLES / "sendgrid-unsubscribe-events.json").read_bytes()
    change = json.loads((SAMPLES / "postmark-subscription-change-webhook.json").read_text())
    change.update(SuppressionReason="ManualSuppression", Origin="Recipient")
    sink = await open_sink(cfg)
    try:
        listener = await listen(make_app(cfg.webhooks, sink))
        now = int(time.time())
        signature = signed(key, unsubscribes, now)
        assert (await listener.post("/sendgrid", unsubscribes, signature))[0] == 200
        assert (await listener.post("/postmark", json.dumps(change), basic()))[0] == 200
    finally:
        await sink.close()
    with SuppressionStore.open(tmp_path / "var") as store:
        for address, actor in (
            ("unsubscribed@test.com", "webhook:sendgrid"),
            ("group-unsubscribed@test.com", "webhook:sendgrid"),
            ("bounced-address@wildbit.com", "webhook:postmark"),
        ):
            entry = store.lookup(address)
            assert entry is not None, address
            assert (entry.reason, entry.evidence, entry.source) == (
                "unsubscribe", "webhook", "webhook",
            )  # fmt: skip
            (added,) = store.history(address)
            assert (added.action, added.actor) == ("added", actor)
        assert store.lookup("resubscribed@test.com") is None


async def test_a_burst_of_unsubscribes_is_never_held_back_as_a_storm(
    tmp_path: Path, listen: Any
) -> None:
    # The storm breaker guards against a provider calling good addresses dead; an
    # unsubscribe is the recipient's own act and must be honoured at once.
    key = ec.generate_private_key(ec.SECP256R1())
    cfg = Config().with_overrides(
        store={"data_dir": str(tmp_path / "var")}, webhooks={"sendgrid_public_key": public_key(key)}
    )
    events = [
        {"email": f"reader{i}@gmail.example", "event": "unsubscribe", "timestamp": 1513299569}
        for i in range(40)
    ]
    body = json.dumps(events).encode()
    sink = await open_sink(cfg)
    try:
        listener = await listen(make_app(cfg.webhooks, sink))
        status, payload, _ = await listener.post(
            "/sendgrid", body, signed(key, body, int(time.time()))
        )
    finally:
        await sink.close()
    assert (status, payload["outcomes"]) == (200, {"suppressed": 40})


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _wait_listening(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(LISTENING):
            return line[len(LISTENING) :].strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no listening line (exit {proc.poll()})")


@pytest.fixture
def postmark_config(tmp_path: Path) -> Path:
    secret = tmp_path / "postmark.pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    return write_config(
        tmp_path / "smtpguard.toml",
        {
            "store": {"data_dir": str(tmp_path / "var")},
            "webhooks": {
                "listen": f"127.0.0.1:{free_port()}",
                "postmark_user": "pm",
                "postmark_password_file": str(secret),
            },
        },
    )


def test_webhooks_serve_runs_the_listener_alone(postmark_config: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpguard", "--config", str(postmark_config), "webhooks", "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        hostport = _wait_listening(proc)
        bounce = (SAMPLES / "postmark-bounce-webhook.json").read_bytes()
        assert _post(f"http://{hostport}/postmark", bounce, basic("wrong")) == 401
        assert _post(f"http://{hostport}/postmark", bounce, basic()) == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    with SuppressionStore.open(tmp_path / "var") as store:
        entry = store.lookup("john@example.com")
        assert entry is not None and entry.reason == "userunknown"


def test_relay_serves_the_webhooks_too(start_relay: Any, tmp_path: Path) -> None:
    secret = tmp_path / "postmark.pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    port = free_port()
    relay = start_relay(
        webhooks={"listen": f"127.0.0.1:{port}", "postmark_user": "pm",
                  "postmark_password_file": str(secret)},
    )  # fmt: skip
    complaint = (SAMPLES / "postmark-spam-complaint-webhook.json").read_bytes()
    assert _post(f"http://127.0.0.1:{port}/postmark", complaint, basic()) == 200
    with SuppressionStore.open(relay.data_dir) as store:
        entry = store.lookup("john@example.com")
        assert entry is not None and (entry.reason, entry.evidence) == ("complaint", "arf")


def test_webhooks_serve_without_a_provider_is_a_one_line_error(cli: Any) -> None:
    r = cli("webhooks", "serve", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("smtpguard: error: no webhook provider is configured")
    assert len(r.stderr.strip().splitlines()) == 1
