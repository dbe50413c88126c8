"""Where the relay's parts meet, typed as Protocols (nothing here is an implementation).

Data flows one way: SMTP in -> :class:`Enqueue` (the queue) -> scheduler ->
delivery (:class:`Router` for next hops, :class:`Shaper` for pacing) ->
:class:`ReplyClassifier` -> outcome -> the policy's sink. The inbound session's
own seam is :class:`smtpguard.relay.session.SessionHost`; the recipient check
at RCPT is :class:`smtpguard.policy.recipient.RecipientPolicy`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from smtpguard.classify.verdict import Verdict
from smtpguard.store.messages import InboundMessage

if TYPE_CHECKING:
    from smtpguard.relay.outcome import Attempt
    from smtpguard.relay.routing import NextHop

#: inbound -> queue: commit durably, return the queue id (raises on storage failure).
Enqueue = Callable[[InboundMessage], Awaitable[str]]


class ReplyClassifier(Protocol):
    """An SMTP reply the delivery client got -> a verdict (``smtpguard.classify.Classifier``)."""

    def reply(
        self, code: int | str, text: str, *, stage: str = ..., recipient: str = ...,
        remote_host: str = ...,
    ) -> Verdict: ...  # fmt: skip


class MessageClassifier(Protocol):
    """A returned message (bytes) -> one verdict per reported recipient ([] if no bounce)."""

    def message(self, data: bytes) -> list[Verdict]: ...


class Router(Protocol):
    """A recipient domain -> the next hops to try in order; raises ``RoutingError``."""

    async def route(self, domain: str) -> Sequence[NextHop]: ...


class Shaper(Protocol):
    """Per-destination traffic shaping: connections, pacing, and what came of it.

    ``destination`` is the delivery side's key: a recipient domain, or
    ``"smarthost"``, or ``"dsn"``.
    """

    def max_connections(self, destination: str) -> int:
        """How many connections may be open to ``destination`` at once."""
        ...

    async def admit(self, destination: str) -> None:
        """Awaited before each message is sent to ``destination``; sleep here to rate-limit."""
        ...

    def feedback(self, destination: str, attempts: Sequence[Attempt]) -> None:
        """What one message's attempt at ``destination`` came to (replies, verdicts)."""
        ...
