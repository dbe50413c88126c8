"""Amazon SES notifications via SNS: signed by "AWS" (a test CA), checked, classified.

The notification bodies are the examples of the SES developer guide (``tests/esp/``);
the SNS envelope and its signature are made here the way AWS documents them, with an
implementation of the string to sign written independently of the one under test.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from smtpguard.config import WebhooksConfig
from smtpguard.intake.webhooks.app import make_app
from smtpguard.intake.webhooks.sns import DirectoryCertificates
from tests.fixtures.pki import Issued
from tests.fixtures.webhooks import CERT_PATH, CERT_URL, SNS_HOST, FakeAws, RecordingSink

SAMPLES = Path(__file__).parent / "esp"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-bounces"
CONFIG = WebhooksConfig(ses_topic_arns=[TOPIC])


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def sign(doc: dict[str, Any], signer: Issued) -> dict[str, Any]:
    """Sign as SNS does: "Key\\nValue\\n" for the type's fields, in byte order."""
    if doc["Type"] == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    text = "".join(f"{k}\n{doc[k]}\n" for k in keys if k in doc)
    algorithm = hashes.SHA1() if doc["SignatureVersion"] == "1" else hashes.SHA256()
    signature = signer.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
    return {**doc, "Signature": base64.b64encode(signature).decode()}


def envelope(message: str, *, version: str = "1", **fields: str) -> dict[str, Any]:
    doc = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2016-01-27T14:59:38.237Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": f"https://{SNS_HOST}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:1",
    }
    doc.update(fields)
    return doc


def confirmation(**fields: str) -> dict[str, Any]:
    token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a7"
    values = {
        "Type": "SubscriptionConfirmation",
        "Token": token,
        "SubscribeURL": (
            f"https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}"
        ),
        **fields,
    }
    return envelope(
        f"You have chosen to subscribe to the topic {TOPIC}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message.",
        **values,
    )


async def post(listener: Any, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, payload, _ = await listener.post(
        "/ses", json.dumps(doc), {"x-amz-sns-message-type": doc["Type"]}
    )
    return status, payload


@pytest.fixture
async def ses(aws: FakeAws, listen: Any) -> Any:
    sink = RecordingSink()
    listener = await listen(make_app(CONFIG, sink, fetch=aws.fetcher()))
    listener.sink = sink
    return listener


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signed_bounce_notification_reaches_the_sink_as_a_verdict(
    ses: Any, sns_signer: Issued, version: str
) -> None:
    doc = sign(envelope(sample("ses-bounce-notification.json"), version=version), sns_signer)
    status, payload = await post(ses, doc)
    assert (status, payload["verdicts"]) == (200, 1)
    ((verdicts, evidence),) = ses.sink.calls
    (v,) = verdicts
    assert (v.recipient, v.reason, v.bounce, v.suppress) == (
        "jane@example.com",
        "userunknown",
        "hard",
        True,
    )
    assert (v.status, v.reply_code) == ("5.1.1", "550")
    assert v.message_id == "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
    assert (evidence.kind, evidence.actor) == ("webhook", "webhook:ses")
    assert evidence.note == f"sns {doc['MessageId']}"


async def test_tampered_notification_is_refused_and_changes_nothing(
    ses: Any, sns_signer: Issued
) -> None:
    doc = sign(envelope(sample("ses-bounce-notification.json")), sns_signer)
    doc["Message"] = doc["Message"].replace("jane@example.com", "ceo@example.com")
    status, payload = await post(ses, doc)
    assert (status, payload["error"]) == (403, "bad signature")
    assert ses.sink.calls == []


async def test_notification_signed_by_another_key_is_refused(ses: Any, test_ca: Any) -> None:
    doc = sign(envelope(sample("ses-bounce-notification.json")), test_ca.issue("impostor"))
    status, _ = await post(ses, doc)
    assert status == 403
    assert ses.sink.calls == []


async def test_signed_notification_for_another_topic_is_refused(
    ses: Any, sns_signer: Issued, aws: FakeAws
) -> None:
    other = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic"
    doc = sign(envelope(sample("ses-bounce-notification.json"), TopicArn=other), sns_signer)
    status, payload = await post(ses, doc)
    assert status == 403 and "is not configured" in payload["error"]
    assert aws.requests == []  # refused before anything was fetched


@pytest.mark.parametrize(
    "cert_url",
    [
        f"http://{SNS_HOST}{CERT_PATH}",
        f"https://sns.us-east-1.amazonaws.com.evil.example{CERT_PATH}",
        f"https://evil.example/{SNS_HOST}{CERT_PATH}",
        f"https://{SNS_HOST}:8443{CERT_PATH}",
        f"https://user@{SNS_HOST}{CERT_PATH}",
    ],
)
async def test_signing_certificate_only_comes_from_an_sns_host_over_https(
    ses: Any, sns_signer: Issued, aws: FakeAws, cert_url: str
) -> None:
    doc = sign(
        envelope(sample("ses-bounce-notification.json"), SigningCertURL=cert_url), sns_signer
    )
    status, _ = await post(ses, doc)
    assert status == 403
    assert aws.requests == []


async def test_signing_certificate_is_fetched_once_and_cached(
    ses: Any, sns_signer: Issued, aws: FakeAws
) -> None:
    for _ in range(3):
        doc = sign(envelope(sample("ses-bounce-notification.json")), sns_signer)
        assert (await post(ses, doc))[0] == 200
    assert aws.requests == [CERT_PATH]
    assert len(ses.sink.calls) == 3


async def test_subscription_confirmation_is_confirmed_at_the_sns_host(
    ses: Any, sns_signer: Issued, aws: FakeAws
) -> None:
    doc = sign(confirmation(), sns_signer)
    status, payload = await post(ses, doc)
    assert (status, payload["verdicts"]) == (200, 0)
    assert any(r.startswith("/?Action=ConfirmSubscription") for r in aws.requests)
    assert ses.sink.calls == []


async def test_subscribe_url_off_the_sns_host_is_never_visited(
    ses: Any, sns_signer: Issued, aws: FakeAws
) -> None:
    doc = sign(
        confirmation(SubscribeURL="https://evil.example/?Action=ConfirmSubscription"), sns_signer
    )
    status, _ = await post(ses, doc)
    assert status == 403
    assert not any("ConfirmSubscription" in r for r in aws.requests)


async def test_complaint_notification_is_feedback(ses: Any, sns_signer: Issued) -> None:
    doc = sign(envelope(sample("ses-complaint-notification.json")), sns_signer)
    assert (await post(ses, doc))[0] == 200
    (v,) = ses.sink.verdicts
    assert (v.recipient, v.reason, v.feedback_type, v.bounce) == (
        "richard@example.com", "feedback", "abuse", "none",
    )  # fmt: skip


async def test_permanent_bounce_without_a_dsn_names_the_addresses(
    ses: Any, sns_signer: Issued
) -> None:
    doc = sign(envelope(sample("ses-bounce-without-dsn-notification.json")), sns_signer)
    assert (await post(ses, doc))[0] == 200
    assert [(v.recipient, v.reason, v.suppress) for v in ses.sink.verdicts] == [
        ("jane@example.com", "userunknown", True),
        ("richard@example.com", "userunknown", True),
    ]


def bounce_event(bounce_type: str, sub_type: str, diagnostic: str = "") -> str:
    event = json.loads(sample("ses-bounce-notification.json"))
    event["bounce"]["bounceType"], event["bounce"]["bounceSubType"] = bounce_type, sub_type
    recipient = event["bounce"]["bouncedRecipients"][0]
    recipient.pop("status")
    recipient["diagnosticCode"] = diagnostic
    return json.dumps(event)


@pytest.mark.parametrize(
    ("bounce_type", "sub_type", "diagnostic", "expected"),
    [
        ("Transient", "MailboxFull", "", ("mailboxfull", "soft", False)),
        ("Transient", "General", "smtp; 550 5.1.1 user unknown", ("userunknown", "soft", False)),
        ("Permanent", "Suppressed", "SES suppressed it", ("suppressed", "hard", False)),
        ("Permanent", "General", "550 5.7.1 blocked using Spamhaus", ("blocked", "hard", False)),
        ("Permanent", "NoEmail", "smtp; 550 unknown recipient", ("userunknown", "hard", True)),
        ("Undetermined", "Undetermined", "", ("onhold", "hard", False)),
    ],
)  # fmt: skip
async def test_bounce_types_fill_only_what_the_reply_leaves_open(
    ses: Any, sns_signer: Issued, bounce_type: str, sub_type: str, diagnostic: str,
    expected: tuple[str, str, bool],
) -> None:  # fmt: skip
    doc = sign(envelope(bounce_event(bounce_type, sub_type, diagnostic)), sns_signer)
    assert (await post(ses, doc))[0] == 200
    (v,) = ses.sink.verdicts
    assert (v.reason, v.bounce, v.suppress) == expected


async def test_malformed_json_is_400(ses: Any) -> None:
    status, _, _ = await ses.post("/ses", "{not json")
    assert status == 400


async def test_message_without_sns_fields_is_400(ses: Any) -> None:
    status, payload, _ = await ses.post("/ses", json.dumps({"Type": "Notification"}))
    assert status == 400 and "not an SNS message" in payload["error"]


async def test_oversized_body_is_413(aws: FakeAws, listen: Any) -> None:
    sink = RecordingSink()
    listener = await listen(
        make_app(WebhooksConfig(ses_topic_arns=[TOPIC], max_body=1024), sink, fetch=aws.fetcher())
    )
    status, _, _ = await listener.post("/ses", b"{" + b" " * 4096 + b"}")
    assert status == 413
    assert sink.calls == []


async def test_store_failure_is_503_so_sns_retries(ses: Any, sns_signer: Issued) -> None:
    ses.sink.fail = True
    doc = sign(envelope(sample("ses-bounce-notification.json")), sns_signer)
    assert (await post(ses, doc))[0] == 503


async def test_signed_message_that_is_not_an_ses_event_is_ignored(
    ses: Any, sns_signer: Issued
) -> None:
    doc = sign(envelope("hello, topic subscribers", Subject="Test"), sns_signer)
    status, payload = await post(ses, doc)
    assert (status, payload["verdicts"]) == (200, 0)


async def test_certificates_from_a_trusted_directory(
    tmp_path: Path, sns_signer: Issued, listen: Any
) -> None:
    (tmp_path / CERT_PATH.lstrip("/")).write_bytes(sns_signer.cert_pem)
    sink = RecordingSink()
    listener = await listen(
        make_app(CONFIG, sink, certificates=DirectoryCertificates(tmp_path), fetch=None)
    )
    doc = sign(envelope(sample("ses-bounce-notification.json")), sns_signer)
    assert (await post(listener, doc))[0] == 200
    unknown = sign(
        envelope(
            sample("ses-bounce-notification.json"), SigningCertURL=f"https://{SNS_HOST}/other.pem"
        ),
        sns_signer,
    )
    assert (await post(listener, unknown))[0] == 403


async def test_expired_signing_certificate_is_refused(
    test_ca: Any, aws: FakeAws, listen: Any, tmp_path: Path
) -> None:
    expired = test_ca.issue("sns.amazonaws.com", days=-0.5)  # valid until 12 hours ago
    (tmp_path / CERT_PATH.lstrip("/")).write_bytes(expired.cert_pem)
    sink = RecordingSink()
    listener = await listen(make_app(CONFIG, sink, certificates=DirectoryCertificates(tmp_path)))
    status, payload = await post(
        listener, sign(envelope(sample("ses-bounce-notification.json")), expired)
    )
    assert status == 403 and "not valid now" in payload["error"]


async def test_unconfigured_provider_is_404(ses: Any) -> None:
    status, _, _ = await ses.post("/sendgrid", "[]")
    assert status == 404
