"""Auto-replies (RFC 3834): vacation / out-of-office answers are not bounces.

One Failure with reason_hint "vacation" for the auto-replier (the From of the reply).
Recognised by the RFC 3834 §5 ``Auto-Submitted: auto-replied`` header, the de-facto
``X-Autoreply`` / ``X-Autorespond`` / ``Precedence: auto_reply`` headers, and the subjects
real auto-responders use. Runs after the bounce detectors, because MTAs mark bounces
``Auto-Submitted`` too.
"""

from __future__ import annotations

import re
from email.message import Message

from smtpguard.classify.formats._common import (
    clean_addr,
    code_in,
    collapse,
    envelope_info,
    header,
    status_in,
)
from smtpguard.classify.formats.plaintext import bounce_text, looks_like_bounce
from smtpguard.classify.verdict import Failure

# Auto-responders put their marker first ("Out of Office: <original subject>"); anchoring
# keeps "Undelivered Mail: Re: vacation plans" a bounce.
_SUBJECT_RE = re.compile(
    r"^(?:(?:re|aw|fw|fwd|wg|tr)\s?:\s*)*(?:\[[^\]]{0,40}\]\s*)?\[?(?:"
    r"out of (?:the )?office|ooo\b|automatic reply|automated (?:reply|response)|"
    r"auto(?:matic)?[- ]?(?:reply|response|answer|antwort)|autoreply|autorespon|auto:|"
    r"vacation|away\b|on leave|absen|abwesen|automatische antwort|r[ée]ponse automatique|"
    r"risposta automatica|fuera de la oficina|respuesta autom[aá]tica|"
    r"\u4e0d\u5728|\u81ea\u52d5\u5fdc\u7b54|\u81ea\u52d5\u8fd4\u4fe1|\u81ea\u52a8\u56de\u590d)",
    re.IGNORECASE,
)


def _auto_header(msg: Message) -> bool:
    auto = header(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    if header(msg, "X-Autoreply") or header(msg, "X-Autorespond"):
        return True
    if header(msg, "X-Apple-Action").lower() == "vacation":
        return True
    if header(msg, "X-Auto-Response-Suppress") and _SUBJECT_RE.search(header(msg, "Subject")):
        return True
    return header(msg, "Precedence").lower() == "auto_reply"


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    subject = header(msg, "Subject")
    if not (_auto_header(msg) or _SUBJECT_RE.search(subject)):
        return None
    if not _SUBJECT_RE.search(subject) and looks_like_bounce(msg):
        # Bounces carry Auto-Submitted too (RFC 3834 §5): a reply code in the text or an
        # X-Failed-Recipients header makes it one; a no-reply auto-responder stays vacation.
        text = bounce_text(msg)
        if header(msg, "X-Failed-Recipients") or code_in(text) or status_in(text):
            return None
        if "mailer-daemon" in header(msg, "From").lower():
            return None
    mid, sender, token = envelope_info(msg)
    return [
        Failure(
            recipient=clean_addr(header(msg, "From")),
            reason_hint="vacation",
            diagnostic=collapse(bounce_text(msg), 300),
            message_id=mid,
            envelope_sender=sender,
            return_path_token=token,
            format="autoreply",
        )
    ]
