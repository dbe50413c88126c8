"""Postmark's bounce and spam complaint webhooks, behind HTTP basic auth."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from smtpguard.config import WebhooksConfig
from smtpguard.intake.webhooks.app import make_app
from tests.fixtures.webhooks import RecordingSink

SAMPLES = Path(__file__).parent / "esp"
BOUNCE = (SAMPLES / "postmark-bounce-webhook.json").read_text()
COMPLAINT = (SAMPLES / "postmark-spam-complaint-webhook.json").read_text()
PASSWORD = "a long webhook password"


def auth(user: str = "postmark", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def postmark(listen: Any, tmp_path: Path) -> Any:
    secret = tmp_path / "postmark.pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    sink = RecordingSink()
    cfg = WebhooksConfig(postmark_user="postmark", postmark_password_file=str(secret))
    listener = await listen(make_app(cfg, sink))
    listener.sink = sink
    return listener


async def test_documented_hard_bounce_suppresses_the_address(postmark: Any) -> None:
    status, payload, _ = await postmark.post("/postmark", BOUNCE, auth())
    assert (status, payload["verdicts"]) == (200, 1)
    ((verdicts, evidence),) = postmark.sink.calls
    (v,) = verdicts
    # "Test bounce details" explains nothing: Postmark's HardBounce type decides.
    assert (v.recipient, v.reason, v.bounce, v.suppress) == (
        "john@example.com",
        "userunknown",
        "hard",
        True,
    )
    assert v.message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert (evidence.kind, evidence.actor) == ("webhook", "webhook:postmark")


async def test_documented_spam_complaint_is_feedback(postmark: Any) -> None:
    assert (await postmark.post("/postmark", COMPLAINT, auth()))[0] == 200
    (v,) = postmark.sink.verdicts
    assert (v.recipient, v.reason, v.feedback_type, v.bounce) == (
        "john@example.com",
        "feedback",
        "abuse",
        "none",
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth(password="wrong"),
        auth(user="someone"),
        {"Authorization": "Bearer " + PASSWORD},
        {"Authorization": "Basic !!!"},
    ],
)
async def test_wrong_or_missing_credentials_are_401_and_change_nothing(
    postmark: Any, headers: dict[str, str]
) -> None:
    status, _, response_headers = await postmark.post("/postmark", BOUNCE, headers)
    assert status == 401
    assert response_headers["WWW-Authenticate"].startswith("Basic")
    assert postmark.sink.calls == []


async def test_scheme_name_is_case_insensitive(postmark: Any) -> None:
    header = auth()["Authorization"].replace("Basic", "basic")
    assert (await postmark.post("/postmark", BOUNCE, {"Authorization": header}))[0] == 200


@pytest.mark.parametrize(
    ("type_", "details", "expected"),
    [
        ("SoftBounce", "452 4.2.2 Mailbox full", ("mailboxfull", "soft", False)),
        ("Transient", "", ("onhold", "soft", False)),
        ("HardBounce", "550 5.7.1 Message rejected as spam", ("spamdetected", "hard", False)),
        ("AutoResponder", "I am on vacation", ("vacation", "none", False)),
        ("Blocked", "", ("blocked", "hard", False)),
    ],
)
async def test_details_decide_and_the_type_fills_the_gaps(
    postmark: Any, type_: str, details: str, expected: tuple[str, str, bool]
) -> None:
    record = {**json.loads(BOUNCE), "Type": type_, "Details": details}
    assert (await postmark.post("/postmark", json.dumps(record), auth()))[0] == 200
    (v,) = postmark.sink.verdicts
    assert (v.reason, v.bounce, v.suppress) == expected


async def test_other_record_types_change_nothing(postmark: Any) -> None:
    record = {"RecordType": "Delivery", "Recipient": "john@example.com", "MessageID": "x"}
    status, payload, _ = await postmark.post("/postmark", json.dumps(record), auth())
    assert (status, payload["verdicts"]) == (200, 0)
    assert postmark.sink.calls == []


async def test_malformed_json_is_400(postmark: Any) -> None:
    assert (await postmark.post("/postmark", "{", auth()))[0] == 400


# --------------------------------------------------------------------------- subscription changes

SUBSCRIPTION = (SAMPLES / "postmark-subscription-change-webhook.json").read_text()


def subscription(**changes: object) -> str:
    return json.dumps({**json.loads(SUBSCRIPTION), **changes})


async def test_a_recipients_own_suppression_is_an_unsubscribe(postmark: Any) -> None:
    body = subscription(SuppressionReason="ManualSuppression", Origin="Recipient")
    status, payload, _ = await postmark.post("/postmark", body, auth())
    assert (status, payload["verdicts"]) == (200, 1)
    ((verdicts, evidence),) = postmark.sink.calls
    (v,) = verdicts
    assert (v.recipient, v.reason, v.bounce) == (
        "bounced-address@wildbit.com",
        "unsubscribe",
        "none",
    )
    assert v.message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert "unsubscribed from message stream outbound" in v.diagnostic
    assert (evidence.kind, evidence.actor) == ("webhook", "webhook:postmark")
    assert evidence.note == "postmark SubscriptionChange 883953f4-6105-42a2-a16a-77a8eac79483"


async def test_the_documented_hard_bounce_suppression_is_a_hard_bounce(postmark: Any) -> None:
    assert (await postmark.post("/postmark", SUBSCRIPTION, auth()))[0] == 200
    (v,) = postmark.sink.verdicts
    assert (v.reason, v.bounce, v.suppress) == ("userunknown", "hard", True)


async def test_a_spam_complaint_suppression_is_feedback(postmark: Any) -> None:
    body = subscription(SuppressionReason="SpamComplaint")
    assert (await postmark.post("/postmark", body, auth()))[0] == 200
    ((verdicts, evidence),) = postmark.sink.calls
    assert [(v.reason, v.feedback_type) for v in verdicts] == [("feedback", "abuse")]
    assert evidence.kind == "arf"


@pytest.mark.parametrize(
    "changes",
    [
        # the sender's own decision on Postmark: no evidence about the address
        {"SuppressionReason": "ManualSuppression", "Origin": "Customer"},
        {"SuppressionReason": "ManualSuppression", "Origin": "Admin"},
        # a reactivation lifts nothing here (suppression remove does)
        {"SuppressSending": False, "SuppressionReason": None},
        {"SuppressSending": "true", "SuppressionReason": "ManualSuppression"},
        {"Recipient": None, "SuppressionReason": "ManualSuppression"},
    ],
)
async def test_other_subscription_changes_give_no_verdict(
    postmark: Any, changes: dict[str, object]
) -> None:
    status, payload, _ = await postmark.post("/postmark", subscription(**changes), auth())
    assert (status, payload["verdicts"]) == (200, 0)
    assert postmark.sink.calls == []


async def test_an_unauthenticated_subscription_change_is_401(postmark: Any) -> None:
    body = subscription(SuppressionReason="ManualSuppression", Origin="Recipient")
    assert (await postmark.post("/postmark", body, auth(password="wrong")))[0] == 401
    assert postmark.sink.calls == []
