"""The queue's records: what the inbound side hands over, and what the queue holds.

Shared by the store (which keeps them) and the relay (which makes and reads
them), so neither side imports the other. The contract at the door: the
inbound SMTP server builds an :class:`InboundMessage` after the final dot and
awaits ``enqueue(msg)``; only when that returns (durably committed) does the
client get 250. Any exception from ``enqueue`` becomes ``451 4.3.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpguard.errors import UserError

# --------------------------------------------------------------------------- accepted mail


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
    # Full message, CRLF line endings, dot-unstuffed, Received: prepended; the inbound
    # session's own buffer (a bytearray), so that a big message exists once in memory.
    data: bytes | bytearray
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
    arrived_at: float = 0.0  # unix time of the transaction's MAIL FROM (0: not known)


# --------------------------------------------------------------------------- queue records


def format_qid(message_id: int) -> str:
    """The queue id shown to people and in ``250 ... queued as <id>``: 10 hex digits."""
    return f"{message_id:010X}"


def parse_qid(qid: str) -> int:
    """The row id from a queue id; a precise :class:`UserError` for anything else."""
    text = qid.strip()
    try:
        value = int(text, 16)
    except ValueError:
        raise UserError(f"not a queue id: {qid!r} (expected hex digits like 000000002A)") from None
    if value <= 0 or len(text) > 16:
        raise UserError(f"not a queue id: {qid!r}")
    return value


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A queued message's envelope and metadata (never its body)."""

    id: int
    kind: str  # 'mail' or 'dsn' (a DSN we generated: routed to dsn.next_hop)
    mail_from: str
    envid: str
    ret: str
    smtputf8: bool
    body_type: str
    size: int
    received_at: float
    auto_submitted: bool
    client: str
    held: bool
    parent_id: int | None = None
    done_at: float | None = None
    arrived_at: float = 0.0  # the transaction's MAIL FROM (0: not known); see InboundMessage

    @property
    def qid(self) -> str:
        return format_qid(self.id)


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient of a queued message and its delivery state."""

    id: int
    message_id: int
    address: str
    domain: str
    notify: tuple[str, ...]
    orcpt: str
    state: str
    attempts: int
    next_attempt: float
    last_attempt: float | None = None
    last_code: str = ""
    last_status: str = ""
    last_reason: str = ""
    last_diag: str = ""
    last_host: str = ""


@dataclass(frozen=True, slots=True)
class QueueEvent:
    """One line of a message's history: received, an attempt's verdict, an operator action."""

    id: int
    ts: float
    message_id: int
    recipient: str
    event: str
    code: str = ""
    status: str = ""
    reason: str = ""
    detail: str = ""
    remote_host: str = ""


@dataclass(frozen=True, slots=True)
class Claim:
    """Recipients of one message claimed (state ``active``) for a delivery attempt."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What one attempt did for one recipient; written by :meth:`QueueStore.record`.

    ``state`` is the new state: ``delivered``, ``bounced``, ``expired`` or
    ``queued`` (deferred, with ``next_attempt``). ``event`` names the history line.
    """

    recipient_id: int
    message_id: int
    address: str
    state: str
    event: str
    next_attempt: float = 0.0
    code: str = ""
    status: str = ""
    reason: str = ""
    diagnostic: str = ""
    remote_host: str = ""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for ``smtpguard queue stats`` and metrics."""

    messages_pending: int
    recipients_by_state: dict[str, int]
    oldest_pending: float | None
    next_due: float | None
    deferred_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """What is left to do, counted cheaply through the indexes (metrics, the report)."""

    messages: int  # messages with work left
    recipients: dict[str, int]  # queued / active / held
    oldest: float | None  # received_at of the oldest message with work left
