"""RFC 5965 Abuse Reporting Format: ``multipart/report; report-type=feedback-report``.

A feedback-loop complaint is not a bounce: one Failure with reason_hint "feedback" and the
Feedback-Type (abuse, fraud, opt-out...). The complained-about recipient is
Original-Rcpt-To (§3.2), else the To of the returned original message (§2.c). Some
providers (Hotmail's JMRP, older AOL) send the report without the multipart wrapper; a
top-level Feedback-Type field in a text part is recognised too.
"""

from __future__ import annotations

from email.message import Message

from smtpguard.classify.formats._common import (
    ADDR_RE,
    clean_addr,
    collapse,
    envelope_info,
    header,
    original_message,
    part_text,
    walk,
)
from smtpguard.classify.formats._fields import Fields, parse_blocks, part_blocks
from smtpguard.classify.verdict import Failure

_DSN = frozenset({"message/delivery-status", "message/global-delivery-status"})


def _report_fields(msg: Message) -> Fields | None:
    for _depth, part, ctype in walk(msg):
        if ctype == "message/feedback-report":
            merged: Fields = {}
            for block in part_blocks(part):
                for k, v in block.items():
                    merged.setdefault(k, v)
            return merged
    # Hotmail/Outlook.com JMRP: a plain wrapper around the original, which carries the
    # complaining recipient in X-HmXmrOriginalRecipient.
    types = {ctype for _depth, _part, ctype in walk(msg)}
    orig = original_message(msg) if "message/rfc822" in types and not types & _DSN else None
    if orig is not None and header(orig, "X-HmXmrOriginalRecipient"):
        return {
            "feedback-type": "abuse",
            "original-rcpt-to": header(orig, "X-HmXmrOriginalRecipient"),
        }
    # A report whose fields sit in a text part (old AOL / Yahoo senders, broken wrappers):
    # a "Feedback-Type:" field line next to the other §3.1 fields identifies it.
    declared = "feedback-report" in header(msg, "Content-Type").lower()
    for _depth, part, ctype in walk(msg):
        if ctype.startswith("message/") and ctype != "message/feedback-report":
            break
        if not ctype.startswith("text/"):
            continue
        text = part_text(part)
        if "eedback-Type:" not in text and "EEDBACK-TYPE:" not in text:
            continue
        for block in parse_blocks(text):
            if "feedback-type" in block and (
                declared or "user-agent" in block or "version" in block
            ):
                return block
    return {} if declared else None


def _apple_unsubscribe(msg: Message) -> list[Failure] | None:
    """Apple Mail's one-tap "unsubscribe" message (``X-Apple-Unsubscribe: true``): an
    opt-out complaint from the From address, sent to the list's unsubscribe address."""
    if header(msg, "X-Apple-Unsubscribe").lower() != "true":
        return None
    mid, sender, token = envelope_info(msg)
    return [
        Failure(
            recipient=clean_addr(header(msg, "From")),
            reason_hint="feedback",
            feedback_type="opt-out",
            message_id=mid,
            envelope_sender=sender,
            return_path_token=token,
            format="arf",
        )
    ]


# Byte strings one of which every report this module reads contains (a C-speed test
# before any part is walked): the Feedback-Type field, Hotmail's JMRP header, Apple's.
_MARKERS = (b"eedback-", b"EEDBACK-", b"HmXmr", b"pple-Unsubscribe", b"PPLE-UNSUBSCRIBE")


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    if not any(m in raw for m in _MARKERS):
        return None
    apple = _apple_unsubscribe(msg)
    if apple:
        return apple
    fields = _report_fields(msg)
    if fields is None:
        return None
    recipients = ADDR_RE.findall(
        fields.get("original-rcpt-to", "") or fields.get("removal-recipient", "")
    )
    if not recipients:
        orig = original_message(msg)
        if orig is not None:
            recipients = ADDR_RE.findall(header(orig, "To"))[:1]
    if not recipients:
        recipients = [""]
    mid, sender, token = envelope_info(msg)
    mail_from = clean_addr(fields.get("original-mail-from", ""))
    feedback_type = fields.get("feedback-type", "").split()[0].lower() if fields else ""
    return [
        Failure(
            recipient=r,
            reason_hint="feedback",
            feedback_type=feedback_type or "other",
            remote_host=collapse(fields.get("reporting-mta", "").split(";")[-1], 255),
            message_id=mid,
            envelope_sender=mail_from or sender,
            return_path_token=token,
            format="arf",
        )
        for r in recipients[:100]
    ]
