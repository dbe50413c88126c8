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

    async def route_expiring(self, domain: str) -> tuple[Sequence[NextHop], float]:
        """The route and the unix time until which it holds (its DNS answers' TTL)."""
        ...


class Shaper(Protocol):
    """Per-site traffic shaping: connections, pacing, and what came of it.

    A *site* is decided after routing (:meth:`site`): the delivery side routes a
    destination (a recipient domain, ``"smarthost"`` or ``"dsn"``) first, then
    asks which site its hops belong to; every other question is about a site.
    Domains of one provider share one site, so one budget.
    """

    def site(self, destination: str, hops: Sequence[NextHop]) -> str:
        """The site ``destination`` belongs to, now that it routed to ``hops``."""
        ...

    def max_connections(self, site: str) -> int:
        """How many connections may be open to ``site`` at once (may change with feedback)."""
        ...

    def messages_per_connection(self, site: str) -> int:
        """Messages sent over one connection to ``site`` before it is closed."""
        ...

    def recipients_per_message(self, site: str) -> int:
        """Recipients per transaction at ``site``; more are sent in several transactions."""
        ...

    def hold(self, site: str, queued: int) -> float:
        """0.0 if a job may join ``site``'s line where ``queued`` jobs wait; else the
        seconds to put it back in the queue for (unattempted: suspended, line full)."""
        ...

    def backoff(self, site: str) -> float:
        """After a connection to ``site`` failed: how long the other waiting jobs are
        put back (unattempted); 0.0 to give them the failure's verdict as well."""
        ...

    async def admit(self, site: str) -> float:
        """Before each message to ``site``: 0.0 to send it now (a token is taken),
        else the seconds to wait before asking again."""
        ...

    def feedback(self, site: str, attempts: Sequence[Attempt]) -> None:
        """What one message's attempt at ``site`` came to (replies, verdicts)."""
        ...
