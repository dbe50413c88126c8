"""What the inbound SMTP server hands to the queue: one accepted message.

This is the contract between ``relay/inbound.py`` (aiosmtpd side) and the queue
(``store/queue.py``): inbound builds an :class:`InboundMessage` after the final
dot and awaits ``enqueue(msg)``; only when that returns (durably committed) does
the client get 250. Any exception from ``enqueue`` becomes ``451 4.3.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT TO with its RFC 3461 DSN parameters."""

    address: str  # normalised as accepted (domain lowercased / IDNA); never empty
    notify: tuple[str, ...] = ()  # () = not given; else subset of NEVER/SUCCESS/FAILURE/DELAY
    orcpt: str = ""  # ORCPT as given ("rfc822;user@example.com"), xtext-decoded; "" if absent


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """An accepted message, ready to be committed to the queue."""

    mail_from: str  # "" for the null reverse-path <>
    recipients: tuple[Recipient, ...]
    data: bytes  # full message, CRLF line endings, dot-unstuffed, Received: prepended
    ret: str = ""  # RFC 3461 RET: "FULL", "HDRS" or ""
    envid: str = ""  # RFC 3461 ENVID, xtext-decoded
    smtputf8: bool = False
    body: str = "7BIT"  # "7BIT" or "8BITMIME" (BODY= parameter)
    client_address: str = ""
    helo: str = ""
    auth_user: str = ""
    received_at: float = 0.0  # unix time
    auto_submitted: bool = False  # message carries Auto-Submitted other than "no"
    extra: dict[str, str] = field(default_factory=dict)
