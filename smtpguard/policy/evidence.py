"""Evidence: where a batch of verdicts came from, which decides what they may do to the list.

Every producer of bounce knowledge hands its verdicts to the sink with one
:class:`Evidence`. The kind is recorded on every suppression and history row,
so "why is this address suppressed?" always says how we know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

EvidenceKind = Literal[
    "rcpt-reply",  # the next hop's reply to RCPT TO for this recipient
    "data-reply",  # the reply after the final dot (transaction_recipients says to whom)
    "session-reply",  # a reply before any recipient: greeting, EHLO, STARTTLS, AUTH, MAIL
    "dns",  # NXDOMAIN or a null MX for the recipient's domain
    "dsn-verified",  # a returned DSN tied to our send (signed VERP return path)
    "dsn-unverified",  # a returned DSN we cannot tie to a send: never enforced
    "arf",  # a complaint tied to our send (signed return path) or an ESP's signed event
    "arf-unverified",  # a complaint we cannot tie to a send (anyone can mail one): recorded
    "webhook",  # an ESP's signed event
    "log",  # a line from the MTA's own log
    "manual",  # an operator's decision
    "import",  # a file an operator imported
]
EVIDENCE_KINDS: tuple[str, ...] = get_args(EvidenceKind)
#: Kinds that are replies in an SMTP session we held: the stage rules apply.
REPLY_KINDS = frozenset({"rcpt-reply", "data-reply", "session-reply"})
#: Per-kind modes an operator can choose (``[policy] modes``).
MODES = ("enforce", "record")


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where a batch of verdicts came from: decides what they may do to the list."""

    kind: EvidenceKind
    actor: str  # "relay", "intake", "milter", "logscan", "webhook:ses", "cli:root"
    transaction_recipients: tuple[str, ...] = ()  # data-reply: every recipient of that transaction
    destination: str = ""  # storm accounting key; "" = the recipient's domain
    note: str = ""
