"""The policy seams intake feeds, as declared for ``smtpguard.policy``.

Stand-ins with the same names and fields until ``smtpguard.policy`` exists in this
tree; then imports switch to it and this module goes. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from smtpguard.classify import Verdict

EvidenceKind = Literal[
    "rcpt-reply", "data-reply", "dns", "dsn-verified", "dsn-unverified",
    "arf", "webhook", "log", "manual", "import",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where a batch of verdicts came from: decides what they may do to the list."""

    kind: EvidenceKind
    actor: str
    transaction_recipients: tuple[str, ...] = ()
    destination: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Applied:
    address: str
    outcome: Literal["suppressed", "pending", "recorded", "ignored"]
    why: str


@dataclass(frozen=True, slots=True)
class SinkReport:
    applied: tuple[Applied, ...]


class VerdictSink(Protocol):
    async def accept(self, verdicts: Sequence[Verdict], evidence: Evidence) -> SinkReport: ...
