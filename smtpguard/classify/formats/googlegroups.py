"""Google Groups rejections: "the group you tried to contact may not exist, or you may
not have permission to post messages to the group".

Sent by Gmail's mailer-daemon with the group address in ``X-Failed-Recipients`` and a body
in the sender's language (no reply code at all). The structure alone says what happened:
the *sender* was refused by the group, so the hint is ``rejected`` and the group address is
never suppressed for it.
"""

from __future__ import annotations

from email.message import Message

from smtpguard.classify.formats._common import ADDR_RE, collapse, envelope_info, header
from smtpguard.classify.formats.plaintext import best_paragraph, bounce_text
from smtpguard.classify.verdict import Failure

_GROUP_DOMAIN = "@googlegroups.com"


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    failed = ADDR_RE.findall(header(msg, "X-Failed-Recipients"))
    if not failed or not all(a.lower().endswith(_GROUP_DOMAIN) for a in failed):
        return None
    if "google" not in header(msg, "From").lower():
        return None
    mid, sender, token = envelope_info(msg)
    diag = collapse(best_paragraph(bounce_text(msg)), 500)
    return [
        Failure(
            recipient=a,
            diagnostic=diag,
            reason_hint="rejected",
            message_id=mid,
            envelope_sender=sender,
            return_path_token=token,
            format="googlegroups",
        )
        for a in failed[:100]
    ]
