"""Challenge/response and allow-list requests: automated "confirm you are a human" mail.

Challenge/response filters (TMDA, SpamArrest, Boxbe, Mailinblack, and the "sender
verification" features of some hosting panels) hold a message and ask its sender to confirm
or to get on the recipient's allow list. That is not a bounce: the recipient exists and
the message may still be delivered, so such mail gives no verdict at all (``[]``) and is
never mistaken for a failure of the address it names.

Recognised by the filters' own marker headers, or by a request subject together with
request wording in the body, and only when nothing bounce-like is present (a delivery-status
part or ``X-Failed-Recipients``).
"""

from __future__ import annotations

import re
from email.message import Message

from smtpguard.classify.formats._common import first_text, header, walk
from smtpguard.classify.verdict import Failure

# Header names the challenge/response products add to their requests.
_MARKER_HEADERS = ("X-TMDA-Confirm", "X-Boxbe-Challenge", "X-SpamArrest", "X-Mailinblack",
                   "X-Challenge", "X-Challenge-Response")  # fmt: skip
_SUBJECT_RE = re.compile(
    r"please confirm|confirm your (?:message|e-?mail|identity)|verify your (?:message|e-?mail|"
    r"address)|sender verification|approval required|whitelist|allow ?list|"
    r"authentication required for your message|is awaiting your confirmation",
    re.IGNORECASE,
)
_BODY_HINTS = (
    "whitelist", "white list", "allowlist", "allow list", "approved senders",
    "approved sender list", "confirm that you are a human", "prove that you are human",
    "verify that you are a human", "click the link below to confirm",
    "reply to this message to confirm", "to confirm your message", "challenge/response",
    "challenge-response", "anti-spam confirmation", "your message is being held",
    "will be delivered once you confirm", "sender verification", "captcha",
)  # fmt: skip
_DSN = frozenset({"message/delivery-status", "message/global-delivery-status"})


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    if header(msg, "X-Failed-Recipients"):
        return None
    if any(ctype in _DSN for _d, _p, ctype in walk(msg)):
        return None
    if any(header(msg, h) for h in _MARKER_HEADERS):
        return []
    if not _SUBJECT_RE.search(header(msg, "Subject")):
        return None
    body = first_text(msg)[:8192].lower()
    return [] if any(h in body for h in _BODY_HINTS) else None
