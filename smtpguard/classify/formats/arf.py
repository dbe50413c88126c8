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
    content_type,
    envelope_info,
    header,
    original_message,
    part_text,
    walk,
)
from smtpguard.classify.formats._fields import Fields, parse_blocks, part_blocks
from smtpguard.classify.mime import parse_headers
from smtpguard.classify.verdict import Failure

_DSN = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ORIGINAL = frozenset({"message/rfc822", "message/global", "text/rfc822-headers"})
#: Feedback reports read from one message (a digest of many), and nesting followed.
MAX_REPORTS = 100
MAX_NESTING = 3


def _merged(part: Message) -> Fields:
    merged: Fields = {}
    for block in part_blocks(part):
        for k, v in block.items():
            merged.setdefault(k, v)
    return merged


def _original_of(part: Message) -> Message | None:
    """The returned message a ``message/rfc822`` / ``text/rfc822-headers`` part carries."""
    payload = part._payload
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    return parse_headers(part_text(part))


def feedback_reports(msg: Message, depth: int = 0) -> list[tuple[Fields, Message | None]]:
    """Every RFC 5965 report in ``msg``: (its fields, the original it reports), in order.

    One ``multipart/report`` holds one report (RFC 5965 section 2), but providers also
    send several in one message: several report groups in one multipart, or a digest that
    attaches each report as a ``message/rfc822`` part. Each ``message/feedback-report``
    part is paired with the original that follows it in the same multipart.
    """
    out: list[tuple[Fields, Message | None]] = []
    for _d, part, _ctype in walk(msg):
        if not part.is_multipart() or len(out) >= MAX_REPORTS:
            continue
        kids = [k for k in part._payload[:64] if isinstance(k, Message)]
        pending: Fields | None = None
        for kid in kids:
            kt = content_type(kid)
            if kt == "message/feedback-report":
                if pending is not None:
                    out.append((pending, None))
                pending = _merged(kid)
            elif kt in _ORIGINAL and pending is not None:
                out.append((pending, _original_of(kid)))
                pending = None
            elif kt in ("message/rfc822", "message/global") and depth < MAX_NESTING:
                inner = _original_of(kid)
                if inner is not None and "feedback-report" in header(inner, "Content-Type").lower():
                    out.extend(feedback_reports(inner, depth + 1))
        if pending is not None:
            out.append((pending, None))
    return out[:MAX_REPORTS]


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


def may_be_report(msg: Message, raw: bytes) -> bool:
    """Cheap test before any report is read. A message that declares itself a delivery
    status report (RFC 3462 ``report-type=delivery-status``) is a bounce, not feedback;
    anything else must contain one of the :data:`_MARKERS`."""
    ctype = header(msg, "Content-Type").lower()
    if "report-type" in ctype and "delivery-status" in ctype:
        return False
    for marker in _MARKERS:  # noqa: SIM110 - a loop, not any(<generator>): every message
        if marker in raw:
            return True
    return False


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    if not may_be_report(msg, raw):
        return None
    apple = _apple_unsubscribe(msg)
    if apple:
        return apple
    reports = feedback_reports(msg)
    if len(reports) > 1 or (reports and reports[0][1] is not None):
        return _from_reports(msg, reports)
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


def _from_reports(msg: Message, reports: list[tuple[Fields, Message | None]]) -> list[Failure]:
    """One feedback Failure per complained-about recipient of every report."""
    mid, sender, token = envelope_info(msg)
    out: list[Failure] = []
    for fields, orig in reports:
        recipients = ADDR_RE.findall(
            fields.get("original-rcpt-to", "") or fields.get("removal-recipient", "")
        )
        if not recipients and orig is not None:
            recipients = ADDR_RE.findall(header(orig, "To"))[:1]
        report_mid = collapse(header(orig, "Message-ID"), 300) if orig is not None else ""
        feedback_type = fields.get("feedback-type", "").split()
        for r in recipients or [""]:
            out.append(
                Failure(
                    recipient=r,
                    reason_hint="feedback",
                    feedback_type=feedback_type[0].lower() if feedback_type else "other",
                    remote_host=collapse(fields.get("reporting-mta", "").split(";")[-1], 255),
                    message_id=report_mid or mid,
                    envelope_sender=clean_addr(fields.get("original-mail-from", "")) or sender,
                    return_path_token=token,
                    format="arf",
                )
            )
            if len(out) >= MAX_REPORTS:
                return out
    return out
