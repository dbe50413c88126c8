"""TEMPORARY stand-ins for ``smtpguard.policy`` until the platform's package lands.

The milter and the policy service are written against the seams' shapes
(``RecipientPolicy.check -> Decision``, ``VerdictSink.accept(verdicts, evidence)
-> SinkReport``, ``Evidence``, ``Client``); this one module supplies minimal
versions of them over the real SQLite suppression store, and is deleted when
``smtpguard.policy.open_recipient_policy`` / ``open_sink`` replace it. Nothing
else in smtpguard may import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from smtpguard.address import normalize_address
from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.errors import AddressError, StoreError
from smtpguard.relay.inbound import suppressed_reply
from smtpguard.store.suppression import SuppressionEntry, SuppressionStore


@dataclass(frozen=True, slots=True)
class Client:
    ip: str = ""
    helo: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["accept", "reject", "defer", "discard"]
    code: int = 250
    status: str = ""
    text: str = ""
    entry: SuppressionEntry | None = None

    @property
    def reply(self) -> str:
        return " ".join(part for part in (str(self.code), self.status, self.text) if part)


@dataclass(frozen=True, slots=True)
class Evidence:
    kind: str
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


class RecipientPolicy(Protocol):
    def check(
        self, sender: str, recipient: str, client: Client, authenticated: bool
    ) -> Decision: ...

    def close(self) -> None: ...


class VerdictSink(Protocol):
    async def accept(self, verdicts: Sequence[Verdict], evidence: Evidence) -> SinkReport: ...

    async def close(self) -> None: ...


ACCEPT = Decision("accept", 250, "2.1.5", "Ok")
LOOKUP_FAILED = Decision("defer", 451, "4.3.0", "Temporary lookup failure, try again")


class InterimRecipientPolicy:
    """The suppression list as a recipient policy: one indexed lookup per recipient."""

    def __init__(self, store: SuppressionStore, reply: str) -> None:
        self._store = store
        self._reply = reply
        code, _, self._status = reply.partition(" ")
        self._code = int(code)

    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        try:
            key = normalize_address(recipient)
        except AddressError:
            return Decision("reject", 501, "5.1.3", "Bad recipient address syntax")
        try:
            entry = self._store.lookup(key)
        except StoreError:
            return LOOKUP_FAILED
        if entry is None:
            return ACCEPT
        text = suppressed_reply(self._reply, key, entry).split(" ", 2)[2]
        return Decision("reject", self._code, self._status, text, entry)

    def close(self) -> None:
        self._store.close()


class InterimSink:
    """Evidence rules reduced to the one that matters here: only a verified DSN suppresses."""

    def __init__(self, store: SuppressionStore) -> None:
        self._store = store

    async def accept(self, verdicts: Sequence[Verdict], evidence: Evidence) -> SinkReport:
        return await asyncio.to_thread(self._apply, list(verdicts), evidence)

    def _apply(self, verdicts: list[Verdict], evidence: Evidence) -> SinkReport:
        applied = []
        for v in verdicts:
            if evidence.kind == "dsn-verified" and v.suppress:
                self._store.record(
                    v.recipient, v.reason, source="dsn", actor=evidence.actor,
                    status=v.status, reply_code=v.reply_code, diagnostic=v.diagnostic,
                )  # fmt: skip
                applied.append(Applied(v.recipient, "suppressed", "verified DSN, hard"))
            else:
                applied.append(Applied(v.recipient, "ignored", f"{evidence.kind}: not enforced"))
        return SinkReport(tuple(applied))

    async def close(self) -> None:
        self._store.close()


def open_recipient_policy(cfg: Config) -> InterimRecipientPolicy:
    store = SuppressionStore.open(cfg.data_dir, busy_timeout=cfg.store.busy_timeout)
    return InterimRecipientPolicy(store, cfg.relay.suppressed_reply)


async def open_sink(cfg: Config) -> InterimSink:
    return InterimSink(SuppressionStore.open(cfg.data_dir, busy_timeout=cfg.store.busy_timeout))
