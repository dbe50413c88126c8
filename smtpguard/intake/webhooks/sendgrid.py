"""``POST /sendgrid``: Twilio SendGrid's Signed Event Webhook.

Authentication ("Getting Started with the Event Webhook Security Features",
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features):
SendGrid signs ``timestamp + raw body`` with ECDSA P-256 / SHA-256 and sends the base64
DER signature in ``X-Twilio-Email-Event-Webhook-Signature``, the timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp``; the public key is shown in SendGrid's mail
settings (``webhooks.sendgrid_public_key``). Unsigned, badly signed or stale requests
(``webhooks.sendgrid_max_age``; SendGrid documents no window, a replayed batch only
counts its bounces again) are 403.

The body is a JSON array of events ("Event Webhook Reference",
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event):

=================  ============================================================
``bounce``         classified from ``status`` + ``reason``; ``bounce_classification``
                   fills the gaps (:data:`BOUNCE_CLASSES`); ``type: blocked`` is a
                   refusal of the sender (``blocked``), never about the address
``deferred``       soft, from ``response``
``dropped``        SendGrid did not send (its own suppression lists): ``suppressed``,
                   never suppresses here
``spamreport``     ``feedback`` (abuse)
``unsubscribe``    ``unsubscribe``: the recipient used the unsubscribe link (or a
                   one-click List-Unsubscribe); ``group_unsubscribe`` too (from one
                   unsubscribe group, ``asm_group_id``: smtpguard's list has no groups,
                   so the address is suppressed for all mail through smtpguard)
``delivered``      ``delivered``
others             (opens, clicks, ``group_resubscribe``, processed) no verdict: a
                   webhook never lifts a suppression (``suppression remove`` does)
=================  ============================================================
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Any

from smtpguard.classify import Classifier, Failure, Verdict
from smtpguard.classify.decide import decide
from smtpguard.intake.esp import esp_verdict, unsubscribe_verdict
from smtpguard.intake.webhooks.app import Clock
from smtpguard.intake.webhooks.request import Refused, json_body

if TYPE_CHECKING:
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
#: ``bounce_classification`` -> (fallback reason, the address itself).
BOUNCE_CLASSES: dict[str, tuple[str, bool]] = {
    "Invalid Address": ("userunknown", True),
    "Mailbox Unavailable": ("suspend", False),
    "Technical": ("systemerror", False),
    "Content": ("contenterror", False),
    "Reputation": ("blocked", False),
    "Frequency or Volume Too High": ("ratelimited", False),
    "Unclassified": ("", False),
}


def verify_signature(
    key: EllipticCurvePublicKey,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float,
) -> None:
    """Raise :class:`Refused` (403) unless SendGrid signed ``timestamp + body`` recently."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise Refused(403, f"unsigned request: no {SIGNATURE_HEADER} / {TIMESTAMP_HEADER}")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise Refused(403, f"{TIMESTAMP_HEADER}: not a unix time")
    if abs(now - int(timestamp)) > max_age:
        raise Refused(403, f"{TIMESTAMP_HEADER}: signed {int(now) - int(timestamp)} s ago")
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(403, "bad signature") from None


def _text(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    return value if isinstance(value, str) else ""


def event_verdict(event: dict[str, Any], classifier: Classifier) -> Verdict | None:
    """One event -> a verdict, or None for events that say nothing about delivery."""
    kind = _text(event, "event")
    failure = Failure(
        recipient=_text(event, "email"), message_id=_text(event, "sg_message_id"), format="sendgrid"
    )
    if not failure.recipient:
        return None
    if kind == "bounce":
        failure.status = _text(event, "status")
        failure.diagnostic = _text(event, "reason")
        if _text(event, "type") == "blocked":
            return esp_verdict(classifier, failure, fallback="blocked")
        fallback, address = BOUNCE_CLASSES.get(_text(event, "bounce_classification"), ("", False))
        return esp_verdict(classifier, failure, fallback=fallback, address=address)
    if kind == "deferred":
        failure.diagnostic = _text(event, "response")
        return esp_verdict(classifier, failure, fallback="onhold", soft=True)
    if kind == "dropped":
        failure.diagnostic = _text(event, "reason")
        failure.reason_hint = "suppressed"
    elif kind in ("unsubscribe", "group_unsubscribe"):
        group = event.get("asm_group_id")
        what = f"SendGrid {kind} event" + (
            f" (unsubscribe group {group})" if isinstance(group, int) and group > 0 else ""
        )
        return unsubscribe_verdict(
            failure.recipient, message_id=failure.message_id, what=what, format="sendgrid"
        )
    elif kind == "spamreport":
        failure.reason_hint, failure.feedback_type = "feedback", "abuse"
    elif kind == "delivered":
        failure.diagnostic = _text(event, "response")
        failure.reason_hint, failure.action = "delivered", "delivered"
    else:
        return None
    return decide(failure, classifier.rules)


class SendgridWebhook:
    """SendGrid's signed Event Webhook."""

    name = "sendgrid"

    def __init__(
        self,
        key: EllipticCurvePublicKey,
        max_age: float,
        classifier: Classifier,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.key = key
        self.max_age = max_age
        self.classifier = classifier
        self.clock = clock

    async def verdicts(self, request: web.Request, body: bytes) -> tuple[list[Verdict], str]:
        verify_signature(
            self.key,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(TIMESTAMP_HEADER),
            body,
            now=self.clock(),
            max_age=self.max_age,
        )
        events = json_body(body, list, "a JSON array of events")
        verdicts = []
        for event in events:
            if isinstance(event, dict):
                verdict = event_verdict(event, self.classifier)
                if verdict is not None:
                    verdicts.append(verdict)
        return verdicts, f"{len(events)} events"
