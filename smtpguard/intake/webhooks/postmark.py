"""``POST /postmark``: Postmark's bounce, spam complaint and subscription change webhooks.

Postmark signs nothing; its webhooks are protected by HTTP basic auth credentials put in
the webhook URL (``https://user:password@host/postmark``). Both are compared in constant
time; a request without them, or with others, is 401 and changes nothing.

The body is one record ("Bounce webhook", https://postmarkapp.com/developer/webhooks/bounce-webhook;
"Spam complaint webhook",
https://postmarkapp.com/developer/webhooks/spam-complaint-webhook): ``RecordType``
``Bounce`` or ``SpamComplaint``, ``Type`` one of Postmark's bounce types (Bounce API,
https://postmarkapp.com/developer/api/bounce-api#bounce-types), ``Email``, ``Details``
(usually the remote server's reply). ``Details`` is classified; the type fills the gaps
as :data:`BOUNCE_TYPES` says (other record types, and types absent from the table such
as ``Unsubscribe``, ``Subscribe``, ``OpenRelayTest``, ``SMTPApiError``, give no verdict).

A ``SubscriptionChange`` record ("Subscription change webhook",
https://postmarkapp.com/developer/webhooks/subscription-change-webhook) says an address
was put on (``SuppressSending: true``) or taken off a message stream's suppression
list, with ``SuppressionReason`` and ``Origin`` (who acted: ``Recipient``, ``Customer``,
``Admin``). :func:`subscription_verdict` reads it:

* ``ManualSuppression`` from the ``Recipient`` (Postmark's unsubscribe link or
  List-Unsubscribe): ``unsubscribe``;
* ``HardBounce``: ``userunknown``, as the ``HardBounce`` bounce type (the bounce webhook
  of the same bounce carries the server's reply; seeing both only counts it twice);
* ``SpamComplaint``: ``feedback``, as the spam complaint webhook;
* a ``ManualSuppression`` by the ``Customer`` or an ``Admin`` is the sender's own
  decision on Postmark, not evidence about the address (bring such a list in with
  ``suppression import --from postmark``, where it is ``manual``), and a reactivation
  (``SuppressSending: false``) lifts nothing here (``suppression remove`` does): no
  verdict.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, Any

from smtpguard.classify import Classifier, Failure, Verdict
from smtpguard.intake.esp import esp_verdict, unsubscribe_verdict
from smtpguard.intake.webhooks.request import Refused, json_body

if TYPE_CHECKING:
    from aiohttp import web

#: Postmark ``Type`` -> (fallback reason, the address itself, soft).
BOUNCE_TYPES: dict[str, tuple[str, bool, bool]] = {
    "HardBounce": ("userunknown", True, False),  # "unknown user, mailbox not found"
    "BadEmailAddress": ("userunknown", True, False),
    "Transient": ("onhold", False, True),
    "SoftBounce": ("onhold", False, True),
    "DnsError": ("networkerror", False, True),
    "SpamNotification": ("spamdetected", False, False),
    "VirusNotification": ("virusdetected", False, False),
    "Blocked": ("blocked", False, False),
    "DMARCPolicy": ("authfailure", False, False),
    "ManuallyDeactivated": ("suppressed", False, False),
    "Unknown": ("onhold", False, False),
    # Not failures: auto-replies and challenge/response mail change nothing.
    "AutoResponder": ("vacation", False, False),
    "AddressChange": ("vacation", False, False),
    "ChallengeVerification": ("vacation", False, False),
    "SpamComplaint": ("feedback", False, False),
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Basic realm="smtpguard webhooks"'}


def check_basic_auth(header: str | None, user: str, password: bytes) -> None:
    """Raise :class:`Refused` (401) unless ``header`` carries exactly these credentials."""
    expected = b"Basic " + base64.b64encode(user.encode() + b":" + password)
    given = (header or "").strip().encode("utf-8", "replace")
    if given[:6].lower() == b"basic ":
        # The scheme name is case-insensitive (RFC 7617); the credentials are not.
        try:
            decoded = base64.b64decode(given[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        given = b"Basic " + base64.b64encode(decoded)
    if not hmac.compare_digest(given, expected):
        raise Refused(401, "wrong or missing credentials", _WWW_AUTHENTICATE)


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return value if isinstance(value, str) else ""


def subscription_verdict(record: dict[str, Any], classifier: Classifier) -> Verdict | None:
    """A ``SubscriptionChange`` record -> a verdict (see the module doc), or None."""
    recipient = _text(record, "Recipient")
    if not recipient or record.get("SuppressSending") is not True:
        return None
    reason, origin = _text(record, "SuppressionReason"), _text(record, "Origin")
    message_id = _text(record, "MessageID")
    if reason == "ManualSuppression" and origin == "Recipient":
        stream = _text(record, "MessageStream")
        what = "Postmark subscription change: the recipient unsubscribed" + (
            f" from message stream {stream}" if stream else ""
        )
        return unsubscribe_verdict(recipient, message_id=message_id, what=what, format="postmark")
    if reason not in ("HardBounce", "SpamComplaint"):
        return None
    fallback, address, soft = BOUNCE_TYPES[reason]
    failure = Failure(
        recipient=recipient, message_id=message_id, format="postmark",
        feedback_type="abuse" if fallback == "feedback" else "",
    )  # fmt: skip
    return esp_verdict(classifier, failure, fallback=fallback, address=address, soft=soft)


def record_verdict(record: dict[str, Any], classifier: Classifier) -> Verdict | None:
    """One Postmark record -> a verdict, or None when it is not about delivery."""
    if record.get("RecordType") == "SubscriptionChange":
        return subscription_verdict(record, classifier)
    kind = record.get("Type")
    email = record.get("Email")
    if record.get("RecordType") not in ("Bounce", "SpamComplaint") or not isinstance(email, str):
        return None
    hints = BOUNCE_TYPES.get(kind) if isinstance(kind, str) else None
    if hints is None:
        return None
    fallback, address, soft = hints
    details = record.get("Details")
    message_id = record.get("MessageID")
    failure = Failure(
        recipient=email,
        diagnostic=details if isinstance(details, str) else "",
        message_id=message_id if isinstance(message_id, str) else "",
        feedback_type="abuse" if fallback == "feedback" else "",
        format="postmark",
    )
    return esp_verdict(classifier, failure, fallback=fallback, address=address, soft=soft)


class PostmarkWebhook:
    """Postmark bounce / spam complaint webhooks behind basic auth."""

    name = "postmark"

    def __init__(self, user: str, password: bytes, classifier: Classifier) -> None:
        self.user = user
        self.password = password
        self.classifier = classifier

    async def verdicts(self, request: web.Request, body: bytes) -> tuple[list[Verdict], str]:
        check_basic_auth(request.headers.get("Authorization"), self.user, self.password)
        record = json_body(body, dict, "a JSON object")
        verdict = record_verdict(record, self.classifier)
        what = record.get("ID", record.get("MessageID"))
        note = f"postmark {str(record.get('RecordType'))[:40]} {str(what)[:80]}"
        return ([verdict] if verdict is not None else []), note
