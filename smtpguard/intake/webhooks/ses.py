"""``POST /ses``: Amazon SES bounce, complaint and delivery notifications via Amazon SNS.

The SNS envelope is verified first (:mod:`.sns`: topic, certificate, signature); a
``SubscriptionConfirmation`` for a configured topic is confirmed by visiting its
``SubscribeURL`` (only on an SNS host); the ``Message`` of a ``Notification`` is the
SES event ("Amazon SNS notification contents for Amazon SES",
https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html), read by the
classifier's own SES reader, so a notification delivered by mail and one posted here
give the same verdicts.

SES's ``bounceType`` / ``bounceSubType`` fill what the recipient's reply leaves open
(see :mod:`smtpguard.intake.esp`), as :data:`BOUNCE_TYPES` says:

==========================================  ===============================================
Permanent / NoEmail                         the address does not exist: ``userunknown``,
                                            a bare "user unknown" counts as said at RCPT
Permanent / General                         ``userunknown`` when the reply explains nothing
                                            (SES lists the address on its suppression list)
Permanent / Suppressed, OnAccountSuppressionList  SES did not send (its own list): ``suppressed``,
                                            never suppresses here
Undetermined                                ``onhold``
Transient / General                         soft, ``onhold`` when the reply explains nothing
Transient / MailboxFull, MessageTooLarge,   soft ``mailboxfull``, ``emailtoolarge``,
ContentRejected, AttachmentRejected         ``contenterror``
==========================================  ===============================================

Complaints are ``feedback`` verdicts with the complaint's feedback type; deliveries are
``delivered`` verdicts (the policy may use them to clear soft-bounce counts).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from smtpguard.classify import Classifier, Verdict
from smtpguard.classify.decide import decide
from smtpguard.classify.formats.amazonses import event_failures
from smtpguard.intake.esp import esp_verdict
from smtpguard.intake.webhooks.app import Clock
from smtpguard.intake.webhooks.fetch import FetchError, check_sns_url
from smtpguard.intake.webhooks.request import Refused
from smtpguard.intake.webhooks.sns import parse_message, verify

if TYPE_CHECKING:
    from aiohttp import web

    from smtpguard.intake.webhooks.fetch import Fetch
    from smtpguard.intake.webhooks.sns import CertificateSource

log = logging.getLogger("smtpguard.webhooks")

#: (bounceType, bounceSubType) -> (fallback reason, address, soft); see the module doc.
BOUNCE_TYPES: dict[tuple[str, str], tuple[str, bool, bool]] = {
    ("Permanent", "NoEmail"): ("userunknown", True, False),
    ("Permanent", "General"): ("userunknown", False, False),
    ("Permanent", "Suppressed"): ("suppressed", False, False),
    ("Permanent", "OnAccountSuppressionList"): ("suppressed", False, False),
    ("Undetermined", "Undetermined"): ("onhold", False, False),
    ("Transient", "General"): ("onhold", False, True),
    ("Transient", "MailboxFull"): ("mailboxfull", False, True),
    ("Transient", "MessageTooLarge"): ("emailtoolarge", False, True),
    ("Transient", "ContentRejected"): ("contenterror", False, True),
    ("Transient", "AttachmentRejected"): ("contenterror", False, True),
}
#: SES says so itself: the reply (if any) must not turn it into a bounce reason.
_SES_DECIDED = frozenset({"suppressed"})


def bounce_hints(bounce_type: str, sub_type: str) -> tuple[str, bool, bool]:
    """(fallback, address, soft) for a bounce type; an unknown sub-type of a known type
    falls back to that type's General entry."""
    hints = BOUNCE_TYPES.get((bounce_type, sub_type))
    if hints is None:
        hints = BOUNCE_TYPES.get((bounce_type, "General"), ("onhold", False, False))
    return hints


def ses_verdicts(event: dict[str, Any], classifier: Classifier) -> list[Verdict]:
    """One SES event (Bounce, Complaint, Delivery) -> one verdict per recipient."""
    bounce = event.get("bounce") if isinstance(event.get("bounce"), dict) else {}
    fallback, address, soft = bounce_hints(
        str(bounce.get("bounceType", "")), str(bounce.get("bounceSubType", ""))
    )
    out = []
    for failure in event_failures(event):
        if failure.reason_hint or not bounce:  # complaint / delivery: the structure says it
            out.append(decide(failure, classifier.rules))
        elif fallback in _SES_DECIDED:
            failure.reason_hint = fallback
            out.append(decide(failure, classifier.rules))
        else:
            out.append(
                esp_verdict(classifier, failure, fallback=fallback, address=address, soft=soft)
            )
    return out


class SesWebhook:
    """Amazon SES notifications through an SNS HTTP(S) subscription."""

    name = "ses"

    def __init__(
        self,
        topics: frozenset[str],
        certificates: CertificateSource,
        confirm: Fetch | None,
        classifier: Classifier,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.topics = topics
        self.certificates = certificates
        self.confirm = confirm
        self.classifier = classifier
        self.clock = clock

    async def verdicts(self, request: web.Request, body: bytes) -> tuple[list[Verdict], str]:
        doc = parse_message(body)
        header = request.headers.get("x-amz-sns-message-type")
        if header is not None and header != doc["Type"]:
            raise Refused(400, f"x-amz-sns-message-type {header!r} but Type {doc['Type']!r}")
        await verify(doc, self.certificates, topics=self.topics, now=self.clock())
        note = f"sns {doc['MessageId']}"
        if doc["Type"] == "SubscriptionConfirmation":
            await self._confirm(doc)
            return [], note
        if doc["Type"] == "UnsubscribeConfirmation":
            log.warning("webhook:ses: unsubscribed from %s", doc["TopicArn"])
            return [], note
        try:
            event = json.loads(doc["Message"])
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict):
            # Signed by SNS for our topic, but not an SES event: nothing to learn, and
            # refusing it would only make SNS send it again.
            log.warning("webhook:ses: %s: the message is not an SES event", note)
            return [], note
        return ses_verdicts(event, self.classifier), note

    async def _confirm(self, doc: dict[str, str]) -> None:
        topic = doc["TopicArn"]
        if self.confirm is None:
            log.warning("webhook:ses: subscription to %s left unconfirmed (off)", topic)
            return
        try:
            url = check_sns_url(doc["SubscribeURL"], what="SubscribeURL")
        except FetchError as e:
            raise Refused(403, str(e)) from None
        try:
            await self.confirm(url)
        except FetchError as e:  # SNS sends the confirmation again
            raise Refused(503, f"cannot confirm the subscription now: {e}") from None
        log.info("webhook:ses: confirmed the subscription to %s", topic)
