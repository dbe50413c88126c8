"""One connection to a next hop as delivery uses it, on :mod:`~smtpguard.relay.smtpclient`.

:meth:`Connection.open` tries the next hops in order until one takes us; the
SMTP itself (greeting, EHLO/HELO, STARTTLS per :mod:`~smtpguard.relay.tlspolicy`,
AUTH only over verified TLS, RFC 2920 PIPELINING where the hop offers it) is
:class:`~smtpguard.relay.smtpclient.SMTPClient`'s. :meth:`Connection.send`
runs one transaction and maps the client's per-recipient results back to the
queue's recipients.

This module speaks SMTP and judges nothing: it reports, per recipient, the
reply and the stage it answered (:class:`RecipientReply`), or why no hop
took us (:class:`Refusal`); the delivery side classifies.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from smtpguard.relay import metrics
from smtpguard.relay.routing import NextHop
from smtpguard.relay.smtpclient import (
    AuthError,
    Credentials,
    Envelope,
    Recipient,
    SMTPClient,
    SMTPClientError,
    Timeouts,
    TLSError,
)
from smtpguard.relay.tlspolicy import TLSPolicy
from smtpguard.store.messages import QueuedMessage, QueuedRecipient

log = logging.getLogger("smtpguard.delivery")

#: The handshake step a refusal answered -> the classifier's stage for it.
_HANDSHAKE_STAGES = {"connect": "connect", "ehlo": "helo", "helo": "helo",
                     "starttls": "connect", "auth": "connect"}  # fmt: skip


RefusalKind = Literal["reply", "network", "tls", "auth"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why no hop took us: a reply (greeting, EHLO, STARTTLS, AUTH), the network, or TLS.

    ``kind``: ``reply`` (``code``/``text`` are the hop's refusal, ``stage`` the
    classifier's stage for it), ``network`` (refused, timeout, garbage: ``text``
    says which), ``tls`` (the TLS policy was not met: no STARTTLS where it is
    required, a certificate that does not verify) or ``auth`` (credentials
    refused, or that cannot be used there: no common mechanism, no verified TLS
    to send them over). ``status`` is the RFC 3463 code to record for the last
    three, always temporary: each is for the operator to fix, not the sender.
    """

    kind: RefusalKind
    label: str  # "host[address]:port" of the last hop tried ("" when there was none)
    text: str
    code: int = 0
    stage: str = "connect"
    status: str = "4.4.1"


@dataclass(frozen=True, slots=True)
class RecipientReply:
    """What the transaction said about one recipient.

    ``delivered``: the hop accepted the final dot for it. Otherwise ``code``
    and ``text`` are the refusal and ``stage`` the command it answered
    (``mail``, ``rcpt``, ``data``). ``local`` is a failure without a reply
    from the hop (connection lost, timeout, the body unreadable): the text to
    record, with ``status`` its RFC 3463 code; it is always temporary.
    """

    recipient: QueuedRecipient
    code: int
    text: str
    stage: str
    delivered: bool = False
    local: str = ""
    status: str = ""


def label(hop: NextHop) -> str:
    return f"{hop.host}[{hop.address}]:{hop.port}"


class Connection:
    """One open SMTP session at a next hop."""

    def __init__(self, client: SMTPClient, hop: NextHop) -> None:
        self.client = client
        self.hop = hop
        self.label = label(hop)

    @property
    def is_connected(self) -> bool:
        """Ready for another transaction."""
        return self.client.usable

    @classmethod
    async def open(
        cls, hops: Sequence[NextHop], *, helo: str, timeouts: Timeouts,
        tls_for: Callable[[NextHop], TLSPolicy],
    ) -> Connection | Refusal:  # fmt: skip
        """Connect to the first hop that takes us; else why the last one did not."""
        refusal = Refusal("network", "", "no next hop")
        for hop in hops:
            where = label(hop)
            client = SMTPClient(
                hop.host, hop.port, address=hop.address, helo_name=helo, tls=tls_for(hop),
                credentials=Credentials(hop.username, hop.password) if hop.username else None,
                timeouts=timeouts,
            )  # fmt: skip
            try:
                hs = await client.open()
            except SMTPClientError as e:
                kind: RefusalKind = (
                    "tls" if isinstance(e, TLSError) else
                    "auth" if isinstance(e, AuthError) else "network"
                )  # fmt: skip
                refusal = Refusal(kind, where, str(e), status=e.status)
                metrics.CONNECTIONS.labels("failed").inc()
                (log.warning if kind != "network" else log.info)("%s: %s", where, e)
                continue
            if not hs.ok and hs.stage == "auth":
                # Our credentials were refused: ours to fix, so the mail waits (as with
                # Postfix's smtp_sasl_auth_soft_bounce) instead of bouncing every message.
                r = hs.reply
                status = f"4{r.status[1:]}" if r.status else "4.7.0"
                refusal = Refusal("auth", where, f"AUTH refused: {r}", status=status)
                metrics.CONNECTIONS.labels("refused").inc()
                log.warning("%s refused our credentials: %s", where, r)
                continue
            if not hs.ok:
                # The greeting, EHLO or STARTTLS refused us.
                r = hs.reply
                refusal = Refusal("reply", where, r.text, r.code, _HANDSHAKE_STAGES[hs.stage])
                metrics.CONNECTIONS.labels("refused").inc()
                log.info("%s refused the session at %s: %s", where, hs.stage, r)
                continue
            if hs.tls_fallback:
                log.info("%s: TLS failed, delivering in plaintext (opportunistic): %s",
                         where, hs.tls_fallback)  # fmt: skip
            return cls(client, hop)
        return refusal

    async def close(self) -> None:
        """QUIT (bounded by the client's quit timeout), then close; never raises."""
        await self.client.quit()

    async def send(
        self, msg: QueuedMessage, recipients: Sequence[QueuedRecipient],
        body: Awaitable[bytes],
    ) -> list[RecipientReply]:  # fmt: skip
        """One transaction for ``recipients``; a :class:`RecipientReply` for each, in order.

        Never raises for the network: a session that ends mid-transaction gives
        the recipients without a final reply a temporary result, and those with
        one (a 5xx at RCPT before a 421) keep it.
        """
        envelope = Envelope(
            msg.mail_from,
            tuple(Recipient(r.address, r.notify, r.orcpt) for r in recipients),
            size=msg.size, body_8bit=msg.body_type == "8BITMIME", smtputf8=msg.smtputf8,
            ret=msg.ret, envid=msg.envid, crlf_body=True,  # the queue's stored form
        )  # fmt: skip
        if not self.client.usable and inspect.iscoroutine(body):
            body.close()  # never awaited: the client refuses before it reads the body
        result = await self.client.send(envelope, body)
        if result.error:
            log.info("%s: %s", self.label, result.error)
        out: list[RecipientReply] = []
        for r, rr in zip(recipients, result.recipients, strict=True):
            reply = rr.reply
            if rr.delivered:
                out.append(RecipientReply(r, reply.code, reply.text.replace("\n", " "), "data",
                                          delivered=True))  # fmt: skip
            elif reply.synthetic and reply.temporary:
                # The session failed without a reply about this recipient.
                text = f"{self.label}: {reply.text}"
                out.append(RecipientReply(r, reply.code, reply.text, rr.stage, local=text,
                                          status=reply.status))  # fmt: skip
            else:
                # The hop's own reply, or a local refusal worth classifying
                # (553 5.6.7 no SMTPUTF8, 552 5.3.4 too large for the hop).
                out.append(RecipientReply(r, reply.code, reply.text, rr.stage))
        return out
