"""What the relay did, as records for whoever watches: the delivery log, per-day counts, metrics.

The relay already knows everything an operator asks about (who sent what, what
each next hop answered, what the suppression sink made of it); these records
carry it out of the relay's hot paths to :class:`Observer`\\ s, called after
the fact (an attempt's records only once its results are committed). An
observer never changes what the relay does, and a failing one is logged, not
propagated: watching must not stop delivery.

Every string here may come from a remote party (a reply text, a client's HELO
name, an address); observers that write them somewhere sanitise them there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from smtpguard.policy.recipient import Client, Decision, RecipientPolicy

log = logging.getLogger("smtpguard.relay")

Status = Literal["sent", "deferred", "bounced", "expired"]


@dataclass(frozen=True, slots=True)
class Timing:
    """When an attempt began and how long its two phases took (seconds).

    ``setup``: connect, greeting, EHLO, STARTTLS, AUTH; 0 on a
    connection already open for an earlier message. ``transmit``: MAIL FROM to
    the reply to the final dot.
    """

    started: float  # unix time
    setup: float = 0.0
    transmit: float = 0.0


@dataclass(frozen=True, slots=True)
class Received:
    """A message committed to the queue (the inbound side answered 250)."""

    qid: str
    mail_from: str
    size: int
    nrcpt: int
    client: str  # the client's IP address
    helo: str
    auth_user: str
    message_id: str  # the Message-ID header, "" if none


@dataclass(frozen=True, slots=True)
class Refused:
    """A recipient refused at RCPT because it is on the suppression list."""

    mail_from: str
    recipient: str
    client: str
    helo: str
    reply: str  # what the client was told ("550 5.1.1 <x>: recipient suppressed ...")
    dsn: str  # its enhanced status ("5.1.1")
    reason: str  # the entry's reason
    evidence: str  # the entry's evidence kind


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one attempt came to for one recipient, once it is recorded."""

    qid: str
    kind: str  # "mail", or "dsn" for a DSN the relay generated
    recipient: str
    domain: str
    status: Status
    relay: str  # "host[address]:port" of the hop that answered, "" if none did
    code: str  # the SMTP reply code, "" without a reply
    dsn: str  # the RFC 3463 status logged (the reply's, or the verdict's)
    reply: str  # the reply text after the code, or what went wrong without a reply
    stage: str  # the command the reply answered (the classifier's stages)
    reason: str  # the verdict's reason ("delivered" for a delivery)
    suppression: str  # what the sink did: suppressed, pending, recorded, ignored, discarded; ""
    suppression_why: str
    arrived_at: float  # MAIL FROM of the inbound transaction (0: not known)
    received_at: float  # committed to the queue
    timing: Timing | None  # None: the attempt's timing is unknown
    finished: float  # when the results were recorded


@dataclass(frozen=True, slots=True)
class DsnQueued:
    """A DSN the relay queued for a message's sender."""

    qid: str  # the original message
    dsn_qid: str
    sender: str  # to whom it goes


class Observer(Protocol):
    """Told what happened; each method must be cheap (it runs on the relay's loop)."""

    def received(self, r: Received) -> None: ...

    def refused(self, r: Refused) -> None: ...

    def attempts(self, records: Sequence[AttemptRecord]) -> None: ...

    def dsn(self, d: DsnQueued) -> None: ...


class Observers:
    """Fans records out to several observers; one failing does not stop the others."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _each(self, method: str, arg: object) -> None:
        for o in self.observers:
            try:
                getattr(o, method)(arg)
            except Exception as e:
                log.error("%s.%s failed: %r", type(o).__name__, method, e)

    def received(self, r: Received) -> None:
        self._each("received", r)

    def refused(self, r: Refused) -> None:
        self._each("refused", r)

    def attempts(self, records: Sequence[AttemptRecord]) -> None:
        self._each("attempts", records)

    def dsn(self, d: DsnQueued) -> None:
        self._each("dsn", d)


class WatchedPolicy:
    """A :class:`~smtpguard.policy.recipient.RecipientPolicy` that tells an observer
    about every recipient it refuses because it is suppressed (a hit of the list)."""

    def __init__(self, policy: RecipientPolicy, observer: Observer) -> None:
        self._policy = policy
        self._observer = observer

    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        decision = self._policy.check(sender, recipient, client, authenticated)
        entry = decision.entry
        if entry is not None and decision.action == "reject":
            self._observer.refused(
                Refused(
                    mail_from=sender,
                    recipient=recipient,
                    client=client.ip,
                    helo=client.helo,
                    reply=decision.reply,
                    dsn=decision.status,
                    reason=entry.reason,
                    evidence=entry.evidence,
                )
            )
        return decision

    def close(self) -> None:
        self._policy.close()
