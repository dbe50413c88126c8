"""One inbound SMTP session: the aiosmtpd protocol the relay's clients talk to.

:class:`RelaySMTP` is aiosmtpd's :class:`~aiosmtpd.smtp.SMTP` protocol with the
relay's rules (see :mod:`smtpguard.relay.inbound` for the behaviour as a
whole): strict MAIL / RCPT syntax and ESMTP parameters
(:mod:`smtpguard.smtp.params`), the recipient check at RCPT through a
:class:`~smtpguard.policy.recipient.RecipientPolicy`, enhanced status codes on
every reply, DATA read in big chunks and unstuffed and normalised into one
buffer as it arrives (:class:`~smtpguard.smtp.data.DataReceiver`), replies of
one loop tick coalesced into one segment, an idle timer that moves a deadline.

Time and memory per client are bounded (Postfix's defences, see
:mod:`smtpguard.relay.inbound`): ``relay.idle_timeout`` per command and while
idle, in DATA a deadline that each octet received extends by
``1/relay.min_data_rate`` seconds (up to ``idle_timeout`` ahead), a whole-session
``relay.session_deadline``, ``relay.junk_command_limit`` NOOP/RSET/VRFY/HELP
commands between messages, and message data held in memory counted against the
server's ``relay.max_data_in_flight``.

It knows its server only through :class:`SessionHost`: the settings, the TLS
context, session bookkeeping, AUTH, the recipient policy, and ``accept`` for a
message after the final dot. The server (:class:`~smtpguard.relay.inbound.InboundServer`)
is one such host; a test or another listener can be another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Any, Protocol

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from smtpguard.address import normalize_address, normalize_domain
from smtpguard.config import RelayConfig
from smtpguard.errors import AddressError
from smtpguard.policy.recipient import LOOKUP_FAILED, Client, Decision, RecipientPolicy
from smtpguard.relay.metrics import REFUSED
from smtpguard.smtp.data import DATA_END, DataReceiver, partial_end
from smtpguard.smtp.params import ParamError, parse_mail_params, parse_rcpt_params, split_path
from smtpguard.smtp.status import leading_status
from smtpguard.smtp.text import printable
from smtpguard.store.messages import Recipient

log = logging.getLogger("smtpguard.inbound")

#: RFC 4954 brute-force brake: AUTH commands allowed per connection.
MAX_AUTH_PER_CONNECTION = 5
#: Message data taken per readuntil(); a typical message arrives in one.
DATA_CHUNK = 256 * 1024
#: Reply codes written at once (push): the connection may close right after them.
_WRITE_AT_ONCE = frozenset({"220", "221", "421", "502"})
#: Message data reserved against the server's budget at a time, beyond SIZE=.
RESERVE_STEP = 64 * 1024


#: Refusals by the recipient policy without a suppression entry, by enhanced status.
_POLICY_REFUSALS = {"4.3.0": "lookup_failed", "5.7.1": "relay_denied", "4.7.1": "rate_limited"}


def _refusal_label(decision: Decision) -> str:
    """The ``smtpguard_inbound_refusals_total`` reason of a policy refusal."""
    if decision.entry is not None:
        return "suppressed"
    return _POLICY_REFUSALS.get(decision.status, "policy")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_if_enabled(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log``, skipped when its logger drops the line anyway.

    aiosmtpd logs every command line at DEBUG and INFO on "mail.log" through
    this helper, which sanitizes the arguments before the logger looks at its
    level: two list builds and regex matches per command, for lines the relay
    (mail.log at WARNING unless configured) never writes.
    """
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    unknown = level is None or not isinstance(logger, logging.Logger)
    if unknown or logger.isEnabledFor(level):  # type: ignore[union-attr,arg-type]
        _sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log_if_enabled  # type: ignore[assignment]


class SessionHost(Protocol):
    """What a session needs from the server it belongs to."""

    settings: RelayConfig
    tls_context: ssl.SSLContext | None
    policy: RecipientPolicy
    stopping: bool

    @property
    def auth_offered(self) -> bool:
        """True when AUTH can succeed at all (a users file is configured)."""
        ...

    #: The idle timeout now: shorter while the server is under stress.
    idle_timeout: float
    #: NOOP/RSET/VRFY/HELP commands allowed between messages now.
    junk_limit: int
    #: Recipients at this domain are refused here ("" for none): the bounce domain,
    #: which belongs on the intake listener.
    foreign_domain: str

    def foreign_reply(self, recipient: str) -> str:
        """The reply for a recipient at :attr:`foreign_domain`."""
        ...

    def register(self, session: RelaySMTP) -> str | None:
        """Count a new session; the 421 reply refusing it (too many sessions, too
        many from its address, shutting down), or None."""
        ...

    def reserve(self, session: RelaySMTP, octets: int) -> bool:
        """Count ``octets`` more of the session's message data against the budget;
        False (nothing counted) when that would exceed it."""
        ...

    def unreserve(self, octets: int) -> None: ...

    def unregister(self, session: RelaySMTP) -> None: ...

    def classify_peer(self, ip: str) -> tuple[bool, bool]:
        """(may relay without AUTH, is loopback) for a client address."""
        ...

    def authenticate(
        self, proto: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult: ...

    async def accept(self, proto: RelaySMTP, session: Session, envelope: RelayEnvelope) -> str:
        """After the final dot: commit the message; the reply (250 or 451) to send."""
        ...


# aiosmtpd's fixed replies carry no enhanced status code; RFC 2034 section 3 wants
# one on every reply after EHLO. Inserted by reply code (RFC 3463 meanings).
_DEFAULT_ENHANCED = {
    "214": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.7.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "552": "5.3.4",
    "554": "5.7.0",
    "555": "5.5.4",
}
_REWRITE = {
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
    "500 Command line too long": "500 5.5.2 Line too long",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
}


# --------------------------------------------------------------------------- protocol


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus the RFC 3461 parameters and parsed recipients."""

    def __init__(self) -> None:
        super().__init__()
        self.body = "7BIT"
        self.ret = ""
        self.envid = ""
        self.recipients: list[Recipient] = []
        self.seen: set[str] = set()
        self.size = 0  # SIZE= of MAIL FROM (RFC 1870), 0 if not given
        self.started = 0.0  # unix time of MAIL FROM: the delivery log's time before the queue


class RelaySMTP(SMTP):
    """One inbound SMTP session (an asyncio protocol, one per connection)."""

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ finds its commands and AUTH mechanisms with
        # dir()/inspect.getmembers() on every new connection, which costs about a
        # quarter of a millisecond on a class this size. Those scans only look for
        # smtp_* and auth_* names, so dir() lists just those (computed once).
        return _PROTOCOL_NAMES

    def __init__(self, host: SessionHost, loop: asyncio.AbstractEventLoop) -> None:
        relay = host.settings
        # Instance attributes shadowing aiosmtpd's class-wide limits. The stream
        # reader's limit is how much :meth:`_read_data` takes in one readuntil()
        # (a typical message in one call); command lines longer than
        # command_size_limit still get 500 (aiosmtpd checks each line's length), and
        # data lines are checked against max_data_line.
        self.line_length_limit = max(relay.max_line_length + 2, DATA_CHUNK)
        self.command_size_limit = relay.max_line_length
        self.max_data_line = relay.max_line_length
        self._out: list[bytes] = []  # replies not yet written (see push)
        self._flush_pending = False
        self.host = host
        self.refusal: str | None = None
        self.trusted = False
        self.loopback = False
        self.client_ip = ""
        self.in_data = False
        self.committing = False
        now = loop.time()
        self.last_activity = now
        self._armed_at = now  # when the idle timer last started
        self._deadline = 0.0
        self._data_deadline = 0.0  # in DATA: credit bought by the octets received
        self._closing_reply: str | None = None  # close once the transaction ends
        self._session_end = now + relay.session_deadline
        self.junk = 0  # NOOP/RSET/VRFY/HELP since the last accepted message
        self.reserved = 0  # message data counted against the server's budget
        super().__init__(
            _Hooks(host),
            hostname=relay.hostname,
            ident="ESMTP smtpguard",
            data_size_limit=relay.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=host.tls_context,
            timeout=relay.idle_timeout,
            auth_require_tls=True,
            authenticator=host.authenticate,
            command_call_limit={"AUTH": MAX_AUTH_PER_CONNECTION, "*": 2**62},
            loop=loop,
        )
        # aiosmtpd's per-command limits live in a class-level dict it grows on
        # every EHLO; give this session its own, fixed one.
        self.command_size_limits = _FixedLimits(relay.max_line_length)

    # -- connection life cycle -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            return  # STARTTLS re-entry: aiosmtpd reset session and envelope (RFC 3207 s. 4.2)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        self.trusted, self.loopback = self.host.classify_peer(self.client_ip)
        # AUTH in clear text only where there is no wire to sniff.
        self._auth_require_tls = not self.loopback
        self.refusal = self.host.register(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.host.unregister(self)
        self._unreserve()
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        now = self.last_activity = self.loop.time()
        if self.in_data:
            # Postfix's smtpd_min_data_rate: the octets buy time, never more than
            # one idle timeout ahead; a byte now and then buys almost nothing.
            credit = self._data_deadline + len(data) / self.host.settings.min_data_rate
            self._data_deadline = min(credit, now + self.host.idle_timeout)
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this before each valid command (never for garbage or a
        # line still arriving): the idle timeout is a time limit per command too.
        # Never beyond the session deadline: the same timer enforces both.
        now = self._armed_at = self.loop.time()
        deadline = now + (duration or self.host.idle_timeout)
        self._arm(deadline if deadline < self._session_end else self._session_end, now)

    def _arm(self, deadline: float, now: float | None = None) -> None:
        # aiosmtpd cancels and re-creates a timer for every command; here the
        # deadline just moves, and a timer that fires early re-arms itself.
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled():
            if (self.loop.time() if now is None else now) < handle.when() <= deadline:
                return  # the pending timer fires first and re-arms itself
            handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)

    def shorten_timeout(self) -> None:
        """The server came under stress: the shorter idle timeout applies now."""
        if not self.in_data and not self.committing:
            deadline = self._armed_at + self.host.idle_timeout
            if deadline < self._deadline:
                self._arm(deadline)

    def _timeout_cb(self) -> None:
        # A pending commit is our wait, not the client's. In DATA the deadline is
        # the credit the received octets bought (see data_received), and a message
        # under way finishes before the session deadline closes the session.
        now = self.loop.time()
        if now < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_cb)
            return
        expired = now >= self._session_end
        if expired and self._closing_reply is None:
            REFUSED["session_deadline"].inc()
            log.info("%s: session deadline reached, disconnecting", self.client_ip)
            self._closing_reply = f"421 4.4.2 {self.hostname} Error: session time limit exceeded"
        if self.committing:
            self._arm(now + 1.0)
            return
        if self.in_data:
            if now < self._data_deadline:
                self._arm(self._data_deadline)
                return
            rate = self.host.settings.min_data_rate
            log.info("%s: message data slower than %d bytes/s, disconnecting", self.client_ip,
                     rate)  # fmt: skip
            REFUSED["slow_data"].inc()
            self._goodbye(
                f"421 4.4.2 {self.hostname} Error: timeout exceeded"
                f" (message data slower than {rate} bytes/s)"
            )
            return
        if expired and self._closing_reply is not None:
            self._goodbye(self._closing_reply)
            return
        log.info("%s: idle timeout, disconnecting", self.client_ip)
        REFUSED["idle_timeout"].inc()
        self._goodbye(f"421 4.4.2 {self.hostname} Error: timeout exceeded")

    def close_idle(self) -> None:
        """Make room under stress: this session has no transaction and was idle longest."""
        REFUSED["idle_closed_for_room"].inc()
        log.info("%s: idle session closed to make room for a new one", self.client_ip)
        self._goodbye(
            f"421 4.7.0 {self.hostname} Error: too many connections, closing idle session"
        )

    async def _handle_client(self) -> None:
        if self.refusal is not None:
            await self.push(self.refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    @property
    def in_transaction(self) -> bool:
        # Covers DATA too: aiosmtpd resets the envelope just before the final reply.
        return self.envelope is not None and self.envelope.mail_from is not None

    def close_for_shutdown(self) -> None:
        """Called when the server stops: idle sessions go now, others after their reply."""
        if not self.in_transaction:
            self._goodbye(f"421 4.3.2 {self.hostname} Service shutting down")

    def _goodbye(self, reply: str) -> None:
        """Send a last reply without waiting for the client, and close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # If the peer is gone already, closing is all that is left.
        with contextlib.suppress(OSError, AttributeError, RuntimeError):
            self._out.append(reply.encode("ascii") + b"\r\n")
            out = b"".join(self._out)
            self._out.clear()
            transport.write(out)  # type: ignore[attr-defined]
        transport.close()

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    # -- replies -----------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        """Queue a reply; replies of one loop tick leave in one segment.

        With PIPELINING (RFC 2920) Postfix sends MAIL, RCPT and DATA in one
        packet; writing each reply at once costs a send() and a wake-up of the
        client per reply. Replies are collected and written by one callback
        when this session's task next waits (for the client or for the queue).
        A reply after which the connection may close (greeting and STARTTLS 220,
        221, 421, 502) is written at once, with everything before it, so a
        close can never drop a queued reply.
        """
        if isinstance(status, str):
            status = _REWRITE.get(status, status)
            code = status[:3]
            if status[3:4] == " " and code in _DEFAULT_ENHANCED and not leading_status(status, 4):
                status = f"{code} {_DEFAULT_ENHANCED[code]} {status[4:]}"
            self._out.append(status.encode("utf-8") + b"\r\n")
            deferrable = code not in _WRITE_AT_ONCE
        else:
            self._out.append(bytes(status) + b"\r\n")
            deferrable = False
        if deferrable:
            if not self._flush_pending:
                self._flush_pending = True
                self.loop.call_soon(self._flush)
        else:
            self._flush()
        await self._writer.drain()
        if self.host.stopping and not self.in_transaction:
            # Shutdown: a transaction just ended (RFC 5321 section 3.8: 421 may come any time).
            self.close_for_shutdown()
        elif self._closing_reply is not None and not self.in_data and not self.committing:
            self._goodbye(self._closing_reply)

    def _flush(self) -> None:
        """Write every queued reply in one segment."""
        self._flush_pending = False
        if not self._out:
            return
        out = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._writer.write(out)

    async def _write_lines(self, lines: list[str]) -> None:
        """A multi-line reply (EHLO), queued like push() does, untouched by its rewriting."""
        out = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self._out.append(out.encode("ascii"))
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)
        await self._writer.drain()

    # -- commands ----------------------------------------------------------------------

    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self._write_lines([self.hostname])

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.data_size_limit}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self.host.auth_offered and (self._tls_protocol or self.loopback):
            lines.append("AUTH PLAIN LOGIN")
        await self._write_lines(lines)

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.envelope is not None
        if not self.host.auth_offered:
            await self.push("502 5.5.1 AUTH not available")
            return
        if self.envelope.mail_from is not None:
            # RFC 4954 section 4: not permitted during a mail transaction.
            await self.push("503 5.5.1 AUTH not permitted during a mail transaction")
            return
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        session, envelope = self.session, self.envelope
        assert session is not None and isinstance(envelope, RelayEnvelope)
        if envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        if not arg or arg[:5].upper() != "FROM:":
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        try:
            inside, param_text = split_path(arg[5:])
        except ValueError as e:
            await self.push(f"501 5.1.7 Bad sender address syntax: {e}")
            return
        try:
            params = parse_mail_params(
                param_text, extended=session.extended_smtp, size_limit=self.data_size_limit or 0
            )
        except ParamError as e:
            await self.push(e.reply)
            return
        address = ""  # "<>": the null reverse-path (RFC 5321 section 4.5.5)
        if inside:
            try:
                address, _ = self._addresses(inside)
            except AddressError:
                await self.push("501 5.1.7 Bad sender address syntax")
                return
            if not params.smtputf8 and not address.isascii():
                await self.push("553 5.6.7 Non-ASCII sender address requires SMTPUTF8")
                return
        if params.size and not self._may_reserve(params.size):
            REFUSED["data_in_flight"].inc()
            await self.push(self._budget_reply())
            return
        envelope.mail_from = address
        envelope.started = time.time()
        envelope.smtp_utf8 = params.smtputf8
        envelope.body = params.body
        envelope.ret = params.ret
        envelope.envid = params.envid
        envelope.size = params.size
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        session, envelope = self.session, self.envelope
        assert session is not None and isinstance(envelope, RelayEnvelope)
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not arg or arg[:3].upper() != "TO:":
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        try:
            inside, param_text = split_path(arg[3:])
            if not inside:
                raise ValueError("empty path")
            address, key = self._addresses(inside)
        except (ValueError, AddressError):
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        if not envelope.smtp_utf8 and not address.isascii():
            await self.push("553 5.6.7 Non-ASCII recipient address requires SMTPUTF8")
            return
        try:
            params = parse_rcpt_params(param_text, extended=session.extended_smtp)
        except ParamError as e:
            await self.push(e.reply)
            return
        shown = printable(address)
        if not (self.trusted or session.authenticated):
            log.info("%s: relay denied for <%s>", self.client_ip, shown)
            REFUSED["relay_denied"].inc()
            await self.push(f"554 5.7.1 <{shown}>: Relay access denied")
            return
        if self.host.foreign_domain and key.rpartition("@")[2] == self.host.foreign_domain:
            log.warning("%s: <%s> is for the bounce domain: misrouted", self.client_ip, shown)
            REFUSED["bounce_domain"].inc()
            await self.push(self.host.foreign_reply(shown))
            return
        if len(envelope.recipients) >= self.host.settings.max_recipients:
            REFUSED["too_many_recipients"].inc()
            await self.push("452 4.5.3 Error: too many recipients")
            return
        client = Client(ip=self.client_ip, helo=session.host_name or "")
        try:
            decision = self.host.policy.check(
                envelope.mail_from or "", key, client, bool(session.authenticated)
            )
        except Exception:
            log.exception("recipient policy failed for <%s>", shown)
            decision = LOOKUP_FAILED
        if decision.action != "accept":
            REFUSED[_refusal_label(decision)].inc()
            await self.push(decision.reply)
            return
        if key not in envelope.seen:
            envelope.seen.add(key)
            envelope.recipients.append(
                Recipient(address=address, notify=params.notify, orcpt=params.orcpt)
            )
            envelope.rcpt_tos.append(address)
        await self.push("250 2.1.5 Ok")

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert isinstance(envelope, RelayEnvelope)
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not envelope.rcpt_tos:
            # With PIPELINING the client sends DATA after all RCPTs were refused.
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        # Over the budget already (or for the SIZE= declared): refused before the data.
        if not self._reserve(max(envelope.size, 1)):
            REFUSED["data_in_flight"].inc()
            await self.push(self._budget_reply())
            return
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self.in_data = True
            self._data_deadline = self.loop.time() + self.host.idle_timeout
            try:
                content, error = await self._read_data()
            except asyncio.CancelledError:
                # The connection went away during DATA (aiosmtpd cancels the handler).
                self._writer.close()
                raise
            finally:
                self.in_data = False
            if error is not None:
                self._set_post_data_state()
                self._reset_timeout()  # idle from now on, not since the DATA command
                await self.push(error)
                return
            envelope.content = content
            envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            self._unreserve()
        self._reset_timeout()
        self._set_post_data_state()
        if status.startswith("250"):
            self.junk = 0
        await self.push(status)

    async def _read_data(self) -> tuple[bytearray, str | None]:
        """Read message data up to ``<CRLF>.<CRLF>``: (stored form, error).

        RFC 5321 section 4.1.1.4: only ``<CRLF>.<CRLF>`` ends the data, and the
        CRLF that ended the DATA command line counts as the first CRLF, so a
        "." first thing is an empty message. Any other look-alike (bare CR or
        LF around a dot) is content: no smuggling. The content keeps the CRLF
        that ends its last line.

        Instead of one readuntil() per line (aiosmtpd), one readuntil() takes
        the whole message when it fits in the stream limit, else chunks of it;
        each chunk goes straight into a :class:`DataReceiver` (unstuffed, line
        endings normalised, one buffer). Only the start needs care: the
        command's CRLF was consumed already, so while what was read so far
        (with that CRLF in front) ends in a proper prefix of the end sequence,
        just enough to complete or refute it is read (readexactly(), or through
        the next LF after a CR). From then on readuntil() sees every possible
        end: a chunk it gives up on (LimitOverrunError) never holds the start
        of one.

        Errors are decided as the data arrives and answered after the end was
        read (RFC 5321 section 4.2.5: the reply comes after the final dot); the
        first problem wins and from then on the data is only counted, never
        kept: ``500 5.5.2`` for a line over ``relay.max_line_length`` octets
        (section 4.5.3.1.6; folding would break signatures, so the message is
        refused, not altered), ``552 5.3.4`` once more than the size limit
        arrived, ``451 4.3.2`` once the server's ``relay.max_data_in_flight``
        has no room for more of it.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        receiver = DataReceiver(self.max_data_line)
        size = 0  # octets of content received so far
        error: str | None = None

        def take(chunk: bytes) -> None:
            nonlocal size, error
            size += len(chunk)
            receiver.feed(chunk)
            if error is not None:
                return
            if receiver.line_too_long:
                error = "500 5.5.2 Line too long"
            elif limit and size > limit:
                error = "552 5.3.4 Message size exceeds fixed maximum message size"
            elif len(receiver.buffer) > self.reserved and not self._reserve(
                max(len(receiver.buffer) - self.reserved, RESERVE_STEP)
            ):
                REFUSED["data_in_flight"].inc()
                error = self._budget_reply()
            if error is not None:
                receiver.drop()
                self._unreserve()

        # Phase 1: piece by piece while the data so far (with the command's CRLF in
        # front) ends in a proper prefix of CRLF.CRLF. Only the last five octets
        # matter, so anything before them is handed on.
        got = bytearray()
        while True:
            end = bytes(got[-5:]) if len(got) >= 5 else b"\r\n" + bytes(got)
            if end.endswith(DATA_END):
                del got[-3:]  # ".CRLF"; the CRLF before it ends the last line
                take(bytes(got))
                return receiver.finish(), error
            k = partial_end(end)
            if k == 0:
                break
            if k == 1:  # a CR: read through the next LF (the end sequence holds one)
                try:
                    piece = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as e:
                    piece = await reader.read(e.consumed)
            else:
                piece = await reader.readexactly(len(DATA_END) - k)
            got += piece
            if len(got) > DATA_CHUNK:
                take(bytes(got[:-5]))
                del got[:-5]
        # Phase 2: readuntil() sees every end sequence from here on; a chunk it gives
        # up on (LimitOverrunError) never holds the start of one. What phase 1 read
        # goes in front of the first chunk (one piece: a typical message is fed once).
        prefix = bytes(got)
        while True:
            try:
                chunk = await reader.readuntil(DATA_END)
            except asyncio.LimitOverrunError as e:
                chunk = await reader.read(e.consumed)
                take(prefix + chunk if prefix else chunk)
                prefix = b""
                continue
            take(prefix + chunk[:-3] if prefix else chunk[:-3])
            return receiver.finish(), error

    # -- memory budget and junk commands ---------------------------------------------

    def _may_reserve(self, octets: int) -> bool:
        """Would the server take ``octets`` more now (the check at MAIL for SIZE=)?"""
        if not self.host.reserve(self, octets):
            return False
        self.host.unreserve(octets)
        return True

    def _reserve(self, octets: int) -> bool:
        if octets <= 0:
            return True
        if not self.host.reserve(self, octets):
            return False
        self.reserved += octets
        return True

    def _unreserve(self) -> None:
        if self.reserved:
            self.host.unreserve(self.reserved)
            self.reserved = 0

    def _budget_reply(self) -> str:
        return (
            f"451 4.3.2 {self.hostname} Error: too much message data in progress, try again later"
        )

    async def _junk(self) -> bool:
        """Count a NOOP, RSET, VRFY or HELP; True (after 421) when over the limit.

        Like Postfix's smtpd_junk_command_limit: a NOOP every few seconds must
        not keep a session (and its slot) forever; a client that sends mail
        starts counting again with each accepted message.
        """
        self.junk += 1
        if self.junk <= self.host.junk_limit:
            return False
        REFUSED["junk_commands"].inc()
        log.info("%s: too many NOOP/RSET/VRFY/HELP commands, disconnecting", self.client_ip)
        self._goodbye(
            f"421 4.7.0 {self.hostname} Error: too many NOOP, RSET, VRFY or HELP commands"
        )
        return True

    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_RSET(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await self.push("252 2.0.0 Send some mail, I'll try my best")

    @staticmethod
    def _addresses(mailbox: str) -> tuple[str, str]:
        """(delivery form, suppression key) of a path's inside; AddressError if invalid.

        The key is :func:`normalize_address` (strict syntax, local part
        lowercased); the delivery form keeps the local part as sent.
        """
        try:
            mailbox.encode("utf-8")  # aiosmtpd decodes with surrogateescape
        except UnicodeEncodeError:
            raise AddressError("address is not valid UTF-8") from None
        key = normalize_address(f"<{mailbox}>")
        text = mailbox
        if text.startswith("@"):  # source route (RFC 5321 section 4.1.2): ignored
            text = text.partition(":")[2]
        local, _, domain = text.rpartition("@")
        return f"{local}@{normalize_domain(domain)}", key

    # -- after the final dot -------------------------------------------------------------

    def protocol_name(self, smtputf8: bool) -> str:
        """RFC 3848 / RFC 6531 section 3.7.3 ``with`` keyword."""
        assert self.session is not None
        if not self.session.extended_smtp:
            return "SMTP"
        name = "UTF8SMTP" if smtputf8 else "ESMTP"
        if self.session.ssl is not None:
            name += "S"
        if self.session.authenticated:
            name += "A"
        return name


_PROTOCOL_NAMES = sorted(n for n in dir(RelaySMTP) if n.startswith(("smtp_", "auth_")))


class _FixedLimits(dict):  # type: ignore[type-arg]
    """``command_size_limits`` replacement: the same limit for every command."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, key: str) -> int:
        return self.limit


class _Hooks:
    """aiosmtpd handler: the hooks the protocol does not implement itself."""

    def __dir__(self) -> list[str]:
        return ["handle_DATA", "handle_exception"]  # see RelaySMTP.__dir__

    def __init__(self, host: SessionHost) -> None:
        self.host = host

    async def handle_DATA(self, proto: RelaySMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, RelayEnvelope)
        return await self.host.accept(proto, session, envelope)

    async def handle_exception(self, error: Exception) -> str:
        log.error("inbound session error: %r", error, exc_info=error)
        return "451 4.3.0 Internal error, try again"
