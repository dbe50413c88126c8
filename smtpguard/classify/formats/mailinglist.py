"""Mailing-list managers refusing a post from a non-member (fml, ezmlm, Mailman).

The list software answers the sender directly: "You are not a member of this mailing list
<list@example.org>". Structurally that is the list rejecting the *sender* (hint
``rejected``), for the list's own address; it never suppresses anything. Recognised by the
list manager speaking (``X-MLServer``, or a ``-admin``/``-owner``/Mailman... sender) plus
the wording.
"""

from __future__ import annotations

import re
from email.message import Message

from smtpguard.classify.formats._common import (
    ADDR_RE,
    clean_addr,
    collapse,
    envelope_info,
    header,
)
from smtpguard.classify.formats.plaintext import bounce_text
from smtpguard.classify.verdict import Failure

_NOT_MEMBER_RE = re.compile(
    r"not (?:a )?member|non-?member|only members (?:can|may) post", re.IGNORECASE
)
_ADMIN_FROM_RE = re.compile(
    r"[-+](?:admin|owner|request|bounces?)@|\b(?:mailman|majordomo|listserv|ezmlm|sympa)\b",
    re.IGNORECASE,
)
_LIST_ADDR_RE = re.compile(r"(?:mailing )?list\W{0,10}<(" + ADDR_RE.pattern + r")>", re.I)


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    # The list manager itself must be talking: its own header, or an admin sender (an
    # ordinary list post that merely says "non-member" is not a rejection).
    if not (header(msg, "X-MLServer") or _ADMIN_FROM_RE.search(header(msg, "From"))):
        return None
    text = bounce_text(msg)
    if not (_NOT_MEMBER_RE.search(header(msg, "Subject")) or _NOT_MEMBER_RE.search(text[:4000])):
        return None
    m = _LIST_ADDR_RE.search(text[:4000])
    recipient = m.group(1) if m else clean_addr(header(msg, "List-Post") or header(msg, "List-Id"))
    if not recipient:
        return None
    first = next((p for p in text.split("\n\n") if p.strip()), "")
    mid, sender, token = envelope_info(msg)
    return [
        Failure(
            recipient=recipient,
            diagnostic=collapse(first, 500),
            reason_hint="rejected",
            message_id=mid,
            envelope_sender=sender,
            return_path_token=token,
            format="mailinglist",
        )
    ]
