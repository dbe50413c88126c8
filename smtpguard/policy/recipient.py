"""RecipientPolicy: may this recipient be accepted? One synchronous, indexed read.

The relay's RCPT handler asks it for every recipient; the milter and the
Postfix policy service will ask it too, so the answer (and the reply text
Postfix turns into its own DSN) is the same wherever mail enters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from smtpguard.address import normalize_address
from smtpguard.errors import AddressError, StoreError
from smtpguard.smtp.text import printable
from smtpguard.store.entries import SuppressionEntry
from smtpguard.store.suppression import SuppressionStore

log = logging.getLogger("smtpguard.policy")

#: Longest suppression diagnostic quoted back in a RCPT reply (the whole reply
#: stays well inside RFC 5321 section 4.5.3.1.5's 512-octet reply line).
MAX_QUOTED_DIAGNOSTIC = 200


@dataclass(frozen=True, slots=True)
class Client:
    """The SMTP client asking (what a policy may take into account)."""

    ip: str = ""
    helo: str = ""
    name: str = ""  # reverse name if known


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer for one recipient."""

    action: Literal["accept", "reject", "defer", "discard"]
    code: int = 250  # SMTP reply code for reject/defer (550, 451)
    status: str = ""  # enhanced status ("5.1.1")
    text: str = ""  # reply text after code and status
    entry: SuppressionEntry | None = None

    @property
    def reply(self) -> str:
        """``"550 5.1.1 <bob@x>: recipient suppressed by smtpguard: ..."``."""
        return " ".join(part for part in (str(self.code), self.status, self.text) if part)


ACCEPT = Decision("accept", 250, "2.1.5", "Ok")
LOOKUP_FAILED = Decision("defer", 451, "4.3.0", "Temporary lookup failure, try again")


class RecipientPolicy(Protocol):
    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        """Synchronous on purpose: one indexed read on the fast path (tens of
        microseconds), no write transaction; the relay's RCPT, the milter and
        the policy service all call it."""
        ...

    def close(self) -> None: ...


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def suppressed_text(address: str, entry: SuppressionEntry) -> str:
    """``<a@b>: recipient suppressed by smtpguard: userunknown since ... (diag)``."""
    evidence = entry.diagnostic or f"{entry.reply_code} {entry.status}".strip()
    evidence = " ".join(printable(evidence).split())
    if len(evidence) > MAX_QUOTED_DIAGNOSTIC:
        evidence = evidence[: MAX_QUOTED_DIAGNOSTIC - 3] + "..."
    text = (
        f"<{printable(address)}>: recipient suppressed by smtpguard: "
        f"{printable(entry.reason)} since {_iso(entry.first_seen)}"
    )
    return f"{text} ({evidence})" if evidence else text


class SuppressionPolicy:
    """The suppression list as a RecipientPolicy: a listed recipient is refused.

    ``reply`` is ``relay.suppressed_reply`` (``"550 5.1.1"``). A lookup that
    fails (database locked past the busy timeout, unreadable) defers with
    ``451 4.3.0``: the client tries again, nothing is accepted unchecked.
    """

    def __init__(self, store: SuppressionStore, *, reply: str = "550 5.1.1") -> None:
        self._store = store
        code, _, status = reply.partition(" ")
        self._code = int(code)
        self._status = status

    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        try:
            key = normalize_address(recipient)
        except AddressError:
            return Decision("reject", 501, "5.1.3", "Bad recipient address syntax")
        local, _, domain = key.rpartition("@")
        try:
            entry = self._store.lookup_key(domain, local)
        except StoreError as e:
            log.error("suppression lookup failed for <%s>: %s", printable(key), e)
            return LOOKUP_FAILED
        if entry is None:
            return ACCEPT
        return Decision("reject", self._code, self._status, suppressed_text(key, entry), entry)

    def close(self) -> None:
        self._store.close()
