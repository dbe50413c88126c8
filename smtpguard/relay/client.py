"""The SMTP client side of one connection to a next hop (RFC 5321), with aiosmtplib.

:meth:`Connection.open` tries the next hops in order until one takes us:
connect, EHLO (HELO fallback), opportunistic STARTTLS (RFC 3207; certificates
not verified, as for opportunistic TLS in Postfix; ``tls="required"`` refuses a
hop that does not offer it), AUTH when the hop has credentials (the smarthost).
:meth:`Connection.send` runs one transaction: MAIL with SIZE, BODY=8BITMIME,
SMTPUTF8 (RFC 1870, 6152, 6531) and, when the hop offers DSN, RET and ENVID;
RCPT with NOTIFY and ORCPT (RFC 3461, xtext encoded); DATA with the body
dot-stuffed in one pass (:func:`smtpguard.smtp.data.wire_data`). Timeouts per
command, and a longer one for the reply to the final dot (RFC 5321 section
4.5.3.2).

This module speaks SMTP and judges nothing: it reports, per recipient, the
reply and the stage it answered (:class:`RecipientReply`); the delivery side
classifies. A connection that dies mid-transaction raises :class:`ConnectionLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from smtpguard.relay import metrics
from smtpguard.relay.routing import NextHop
from smtpguard.smtp import xtext
from smtpguard.smtp.data import wire_data
from smtpguard.smtp.params import orcpt_param
from smtpguard.store.messages import QueuedMessage, QueuedRecipient

log = logging.getLogger("smtpguard.delivery")


class ConnectionLost(Exception):
    """The session died mid-transaction; the message's recipients are deferred."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why no hop took us: a reply (greeting, EHLO, STARTTLS, AUTH), the network, or TLS.

    ``kind``: ``reply`` (``code``/``text`` are the hop's refusal), ``network``
    (refused, timeout, TLS failure: ``text`` says which) or ``tls-required``
    (the hop does not offer STARTTLS and the route requires it).
    """

    kind: Literal["reply", "network", "tls-required"]
    label: str  # "host[address]:port" of the last hop tried ("" when there was none)
    text: str
    code: int = 0


@dataclass(frozen=True, slots=True)
class RecipientReply:
    """What the transaction said about one recipient.

    ``delivered``: the hop accepted the final dot for it. Otherwise ``code`` and
    ``text`` are the refusal and ``stage`` the command it answered (``mail``,
    ``rcpt``, ``data``); ``local`` is a failure on our side with no reply at all
    (the body could not be read).
    """

    recipient: QueuedRecipient
    code: int
    text: str
    stage: str
    delivered: bool = False
    local: str = ""


def label(hop: NextHop) -> str:
    return f"{hop.host}[{hop.address}]:{hop.port}"


async def send_data(
    smtp: aiosmtplib.SMTP, body: bytes, *, timeout: float
) -> aiosmtplib.SMTPResponse:
    """``DATA``, then the body as :func:`~smtpguard.smtp.data.wire_data` makes it; the reply.

    Does what ``aiosmtplib.SMTP.data`` does (same errors: SMTPDataError for a
    reply other than 354 / 250, SMTPServerDisconnected / SMTPTimeoutError with
    the connection closed) without its two regex passes over every body.
    """
    resp = await smtp.execute_command(b"DATA", timeout=timeout)
    if resp.code != 354:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    try:
        protocol.write(wire_data(body))
        resp = await protocol.read_response(timeout=timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        smtp.close()  # a reply may still be on its way: never reuse this connection
        raise
    if resp.code != 250:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    return resp


class Connection:
    """One open SMTP session at a next hop."""

    def __init__(self, smtp: aiosmtplib.SMTP, hop: NextHop) -> None:
        self.smtp = smtp
        self.hop = hop
        self.label = label(hop)

    @property
    def is_connected(self) -> bool:
        return bool(self.smtp.is_connected)

    @classmethod
    async def open(
        cls, hops: Sequence[NextHop], *, helo: str, connect_timeout: float,
        command_timeout: float,
    ) -> Connection | Refusal:  # fmt: skip
        """Connect to the first hop that takes us; else why the last one did not."""
        refusal = Refusal("network", "", "no next hop")
        for hop in hops:
            smtp = aiosmtplib.SMTP(
                hostname=hop.address, port=hop.port, local_hostname=helo,
                timeout=command_timeout, start_tls=False, use_tls=False,
            )  # fmt: skip
            where = label(hop)
            try:
                await smtp.connect(timeout=connect_timeout)
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
                if hop.tls != "none" and smtp.supports_extension("starttls"):
                    await smtp.starttls(server_hostname=hop.host, validate_certs=False,
                                        timeout=command_timeout)  # fmt: skip
                    await smtp.ehlo()
                elif hop.tls == "required":
                    smtp.close()
                    text = f"{where} does not offer STARTTLS and TLS is required"
                    refusal = Refusal("tls-required", where, text)
                    continue
                if hop.username:
                    await smtp.login(hop.username, hop.password)
                return cls(smtp, hop)
            except aiosmtplib.SMTPResponseException as e:
                # The greeting, EHLO, STARTTLS or AUTH refused us.
                smtp.close()
                refusal = Refusal("reply", where, e.message, e.code)
                metrics.CONNECTIONS.labels("refused").inc()
                log.info("%s refused the session: %s %s", where, e.code, e.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                smtp.close()
                text = f"connect to {where}: {type(e).__name__}: {e}"
                refusal = Refusal("network", where, text)
                metrics.CONNECTIONS.labels("failed").inc()
                log.info("%s", text)
        return refusal

    async def close(self, timeout: float) -> None:
        """QUIT (bounded), then close."""
        with contextlib.suppress(Exception):
            if self.smtp.is_connected:
                await self.smtp.quit(timeout=timeout)
        self.smtp.close()

    async def _reset(self) -> None:
        if self.smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await self.smtp.rset()

    async def send(
        self, msg: QueuedMessage, recipients: Sequence[QueuedRecipient],
        body: asyncio.Future[bytes], *, data_timeout: float,
    ) -> list[RecipientReply]:  # fmt: skip
        """One transaction for ``recipients``; a :class:`RecipientReply` for each.

        Raises :class:`ConnectionLost` when the session dies on the way (the
        replies so far are then worth nothing: the whole message is deferred).
        """
        try:
            return await self._transaction(msg, recipients, body, data_timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as e:
            raise ConnectionLost(f"{self.label}: {type(e).__name__}: {e}") from None

    async def _transaction(
        self, msg: QueuedMessage, recipients: Sequence[QueuedRecipient],
        body_future: asyncio.Future[bytes], data_timeout: float,
    ) -> list[RecipientReply]:  # fmt: skip
        smtp = self.smtp
        dsn = smtp.supports_extension("dsn")
        needs_utf8 = not msg.mail_from.isascii() or any(not r.address.isascii() for r in recipients)
        utf8 = msg.smtputf8 and smtp.supports_extension("smtputf8")
        if needs_utf8 and not utf8:
            # RFC 6531 section 3.4: without SMTPUTF8 at the next hop this cannot be sent.
            text = "5.6.7 the next hop does not support SMTPUTF8"
            return [RecipientReply(r, 553, text, "mail") for r in recipients]
        enc = "utf-8" if utf8 else "ascii"
        opts = [f"SIZE={msg.size}"] if smtp.supports_extension("size") else []
        if msg.body_type == "8BITMIME" and smtp.supports_extension("8bitmime"):
            opts.append("BODY=8BITMIME")
        if utf8:
            opts.append("SMTPUTF8")
        if dsn:
            if msg.ret:
                opts.append(f"RET={msg.ret}")
            if msg.envid:
                opts.append(f"ENVID={xtext.encode(msg.envid)}")
        resp = await smtp.execute_command(
            b"MAIL", f"FROM:<{msg.mail_from}>".encode(enc), *(o.encode() for o in opts)
        )
        if resp.code != 250:
            await self._reset()
            return [RecipientReply(r, resp.code, resp.message, "mail") for r in recipients]
        replies: list[RecipientReply] = []
        accepted: list[QueuedRecipient] = []
        for r in recipients:
            ropts: list[bytes] = []
            if dsn:
                if r.notify:
                    ropts.append(f"NOTIFY={','.join(r.notify)}".encode())
                if r.orcpt:
                    ropts.append(orcpt_param(r.orcpt).encode())
            resp = await smtp.execute_command(b"RCPT", f"TO:<{r.address}>".encode(enc), *ropts)
            if resp.code in (250, 251):
                accepted.append(r)
            else:
                replies.append(RecipientReply(r, resp.code, resp.message, "rcpt"))
                if resp.code == 421:
                    raise aiosmtplib.SMTPServerDisconnected(f"421 {resp.message}")
        if not accepted:
            await self._reset()
            return replies
        try:
            body = await body_future
        except Exception as e:
            await self._reset()
            why = f"message body unreadable: {e}"
            return replies + [RecipientReply(r, 0, "", "data", local=why) for r in accepted]
        try:
            resp = await send_data(smtp, body, timeout=data_timeout)
        except aiosmtplib.SMTPDataError as e:
            await self._reset()
            return replies + [RecipientReply(r, e.code, e.message, "data") for r in accepted]
        text = resp.message.replace("\n", " ")
        return replies + [
            RecipientReply(r, resp.code, text, "data", delivered=True) for r in accepted
        ]
