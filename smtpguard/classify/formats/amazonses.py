"""Amazon SES notifications delivered by e-mail (SNS topic -> email subscription).

The body is JSON, not a bounce text: an SNS envelope whose ``Message`` is itself a JSON
string, or the SES event directly. ``notificationType`` Bounce -> ``bouncedRecipients``,
Complaint -> ``complainedRecipients`` (feedback), Delivery -> ``delivery.recipients``
(delivered). Field names follow the SES notification contents reference.
"""

from __future__ import annotations

import json
from email.message import Message
from typing import Any

from smtpguard.classify.formats._common import clean_addr, collapse, fill_codes, first_text
from smtpguard.classify.verdict import Failure

_MAX_JSON = 256 * 1024


def _event(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    end = text.rfind("}")
    if start < 0 or end <= start or end - start > _MAX_JSON:
        return None
    try:
        data = json.loads(text[start : end + 1], strict=False)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        try:
            data = json.loads(data["Message"], strict=False)
        except (ValueError, RecursionError):
            return None
    if not isinstance(data, dict):
        return None
    kind = data.get("notificationType") or data.get("eventType")
    return data if kind in ("Bounce", "Complaint", "Delivery") else None


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _items(v: object) -> list[Any]:
    """A JSON list, at most 100 items; anything else is empty (hostile input)."""
    return v[:100] if isinstance(v, list) else []


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    text = first_text(msg)
    if '"notificationType' not in text and '"eventType' not in text:
        return None
    event = _event(text)
    if event is None:
        return None
    return event_failures(event) or None


def event_failures(event: dict[str, Any]) -> list[Failure]:
    """One SES Bounce / Complaint / Delivery event (already parsed JSON) -> Failures.

    Shared with the SES webhook, which receives the same events over HTTP.
    """
    kind = event.get("notificationType") or event.get("eventType")
    mail = event.get("mail") if isinstance(event.get("mail"), dict) else {}
    mid = _str(mail.get("messageId"))
    sender = clean_addr(_str(mail.get("source")))
    out: list[Failure] = []
    if kind == "Bounce":
        bounce = event.get("bounce") if isinstance(event.get("bounce"), dict) else {}
        remote = _str(bounce.get("reportingMTA")).split(";")[-1].strip()
        for r in _items(bounce.get("bouncedRecipients")):
            if not isinstance(r, dict):
                continue
            diag = _str(r.get("diagnosticCode"))
            diag = diag.split(";", 1)[1] if diag.lower().startswith("smtp;") else diag
            f = Failure(
                recipient=clean_addr(_str(r.get("emailAddress"))),
                status=_str(r.get("status")),
                action=_str(r.get("action")),
                diagnostic=collapse(diag),
                remote_host=remote,
                format="amazonses",
            )
            out.append(fill_codes(f))
    elif kind == "Complaint":
        complaint = event.get("complaint") if isinstance(event.get("complaint"), dict) else {}
        for r in _items(complaint.get("complainedRecipients")):
            if isinstance(r, dict):
                out.append(
                    Failure(
                        recipient=clean_addr(_str(r.get("emailAddress"))),
                        reason_hint="feedback",
                        feedback_type=_str(complaint.get("complaintFeedbackType")) or "abuse",
                        format="amazonses",
                    )
                )
    else:
        delivery = event.get("delivery") if isinstance(event.get("delivery"), dict) else {}
        reply = collapse(_str(delivery.get("smtpResponse")))
        for r in _items(delivery.get("recipients")):
            f = Failure(
                recipient=clean_addr(_str(r)),
                diagnostic=reply,
                action="delivered",
                reason_hint="delivered",
                remote_host=_str(delivery.get("reportingMTA")),
                format="amazonses",
            )
            out.append(fill_codes(f))
    for f in out:
        f.message_id, f.envelope_sender = mid, sender
    return [f for f in out if f.recipient]
