"""The outbound SMTP client: one connection to a next hop, many transactions over it.

Why our own client: the relay needs what a general-purpose library does not
give together: RFC 2920 PIPELINING (MAIL, every RCPT and DATA in one write,
one round trip per message instead of 3 + recipients), a reply per recipient
*with the stage it answered* (the classifier needs both), verdicts kept when
the session drops later in the transaction, TLS whose verification the caller
controls (:mod:`smtpguard.relay.tlspolicy`), and hard bounds on what a hostile
server can make it hold or wait for.

Usage::

    client = SMTPClient("mx.example.net", 25, address="192.0.2.7", helo_name="relay.example")
    hs = await client.open()            # greeting, EHLO/HELO, STARTTLS per policy, AUTH
    if not hs.ok:                       # a refusal is a reply, not an exception
        ...classify hs.reply at hs.stage...
    result = await client.send(Envelope("a@x", (Recipient("b@y"),)), body)
    for r in result.recipients:         # r.reply (code, status, text), r.stage
        ...
    if result.reusable:                 # else the session is closed: open a new one
        result = await client.send(...)
    await client.quit()

Errors that carry no reply from the server (refused connection, timeout,
garbage, TLS policy, credentials refused locally) raise
:class:`SMTPClientError` subclasses from :meth:`SMTPClient.open`, each with a
``status`` (an RFC 3463 enhanced code, always 4.x.x: the condition is local or
temporary). :meth:`SMTPClient.send` (called while ``usable``; one transaction
at a time) never raises for the network: a session that dies mid-transaction
gives every recipient without a final reply a soft result (a synthetic
``421 4.4.2``, or the server's own ``421``), and recipients that already had
their final reply keep it.

Bounds (:class:`ReplyLimits`): a reply line over ``max_line`` bytes, a reply
over ``max_lines`` lines or ``max_reply`` bytes, or a line that is not
``NNN[ -]text`` ends the session with :class:`ProtocolError`. Every reply has
one deadline for all its lines (so a server trickling lines cannot stretch
it), and replies that pile up unread pause reading from the socket.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import inspect
import re
import ssl
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from smtpguard.relay.tlspolicy import TLSInfo, TLSPolicy, TLSPolicyError
from smtpguard.smtp import xtext
from smtpguard.smtp.data import wire_data
from smtpguard.smtp.params import orcpt_param

__all__ = [
    "AuthError",
    "ConnectFailed",
    "ConnectionLost",
    "Credentials",
    "Envelope",
    "Handshake",
    "InsecureAuthError",
    "ProtocolError",
    "Recipient",
    "RecipientResult",
    "Reply",
    "ReplyLimits",
    "ReplyTimeout",
    "SMTPClient",
    "SMTPClientError",
    "TLSError",
    "TLSRequiredError",
    "Timeouts",
    "TransactionResult",
]

Stage = Literal["mail", "rcpt", "data"]
HandshakeStage = Literal["connect", "ehlo", "helo", "starttls", "auth"]

# ----------------------------------------------------------------------------- errors


class SMTPClientError(Exception):
    """A session failed without a reply to classify; ``status`` is the RFC 3463 code to record."""

    status = "4.4.2"  # bad connection


class ConnectFailed(SMTPClientError):
    """TCP connect refused, unreachable or timed out."""

    status = "4.4.1"  # no answer from host


class ConnectionLost(SMTPClientError):
    """The server closed the connection (or it broke) while we waited for it."""


class ReplyTimeout(SMTPClientError):
    """No complete reply within the timeout (RFC 5321 section 4.5.3.2)."""


class ProtocolError(SMTPClientError):
    """The server sent something that is not an SMTP reply, or too much of one."""

    status = "4.5.0"


class TLSError(SMTPClientError):
    """STARTTLS failed: handshake error, or the certificate failed the policy."""

    status = "4.7.5"  # cryptographic failure


class TLSRequiredError(TLSError):
    """The policy requires TLS and the server does not offer (or refuses) STARTTLS."""

    status = "4.7.10"  # encryption needed


class _BodyUnavailable(SMTPClientError):
    """The message body could not be read after the server said 354."""

    status = "4.3.0"


class AuthError(SMTPClientError):
    """Credentials are configured but cannot be used with this server."""

    status = "4.7.0"


class InsecureAuthError(AuthError):
    """Credentials would go over a connection that is not verified TLS: refused locally."""

    status = "4.7.11"  # encryption required for requested authentication mechanism


# ----------------------------------------------------------------------------- records


_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, RFC 3463 enhanced status ('' if none), text.

    ``text`` is everything after the code, lines joined with ``\\n`` (the
    enhanced status stays at its start, as the classifier expects), control
    characters replaced. ``synthetic`` marks a reply the client made up for a
    failure the server did not report (connection lost, timeout, a local check).
    """

    code: int
    status: str
    text: str
    synthetic: bool = False

    @classmethod
    def parse(cls, code: int, text: str, *, synthetic: bool = False) -> Reply:
        m = _ENHANCED.match(text)
        # A status whose class contradicts the code is not trusted (RFC 3463 section 2).
        status = m.group(0) if m and m.group(1) == str(code)[0] else ""
        return cls(code, status, text, synthetic)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def _lost(why: str, status: str = "4.4.2") -> Reply:
    return Reply(421, status, f"{status} {why}", synthetic=True)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; defaults are RFC 5321 section 4.5.3.2's minimums (5 and 10 minutes)."""

    connect: float = 30.0
    command: float = 300.0  # greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, RSET, body writes
    data: float = 600.0  # the reply to the final dot
    quit: float = 10.0


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """What one reply may cost us; a server going over ends the session."""

    max_line: int = 4096  # bytes per line with CRLF (RFC 5321 says 512; servers overshoot)
    max_lines: int = 100  # lines per reply (an EHLO reply has ~15)
    max_reply: int = 65536  # bytes per reply
    max_unread: int = 262144  # bytes of complete, not yet read replies before reading pauses


@dataclass(frozen=True)
class Credentials:
    """AUTH PLAIN/LOGIN credentials (RFC 4954); the password never appears in repr()."""

    username: str
    password: str = field(repr=False)


_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


def _check_address(what: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} contains CR, LF or NUL: {value!r}")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT TO, with its RFC 3461 parameters (sent when the server offers DSN)."""

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str = ""  # "rfc822;addr" (or a bare address, taken as rfc822)

    def __post_init__(self) -> None:
        _check_address("recipient", self.address)
        _check_address("ORCPT", self.orcpt)
        bad = [n for n in self.notify if n.upper() not in _NOTIFY]
        if bad:
            raise ValueError(f"NOTIFY values must be among {sorted(_NOTIFY)}, got {bad}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One transaction's envelope: sender, recipients, and the MAIL FROM parameters."""

    mail_from: str  # "" for the null reverse-path
    recipients: tuple[Recipient, ...]
    size: int | None = None  # SIZE= (RFC 1870) when the server offers SIZE
    body_8bit: bool = False  # BODY=8BITMIME when offered (RFC 6152)
    smtputf8: bool = False  # SMTPUTF8 when offered (RFC 6531); needed for non-ASCII addresses
    ret: str = ""  # RET=FULL|HDRS when the server offers DSN (RFC 3461)
    envid: str = ""  # ENVID, xtext-encoded on the wire
    #: The body is in the queue's stored form already (CRLF lines, each bare CR and LF
    #: made CRLF when it was queued): sending only dot-stuffs it, no second scan.
    crlf_body: bool = False

    def __post_init__(self) -> None:
        _check_address("sender", self.mail_from)
        _check_address("ENVID", self.envid)
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if self.ret and self.ret.upper() not in ("FULL", "HDRS"):
            raise ValueError(f"RET must be FULL or HDRS, not {self.ret!r}")


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The final word on one recipient in one transaction, and the stage that gave it.

    ``stage`` is the command the reply answered: ``mail`` (the sender was
    refused: about the envelope, not this address), ``rcpt`` (this address),
    ``data`` (the DATA command or the final dot). When the session ended
    before the recipient's final reply, ``reply`` is the server's ``421`` or a
    synthetic ``421 4.4.2`` and ``stage`` is where the session ended.
    """

    recipient: Recipient
    reply: Reply
    stage: Stage

    @property
    def delivered(self) -> bool:
        return self.stage == "data" and self.reply.ok


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """One transaction: a result per recipient (envelope order) and the session's state."""

    recipients: tuple[RecipientResult, ...]
    reusable: bool  # the connection may carry another transaction
    pipelined: bool
    error: str = ""  # why the session ended ('' while it lives)


@dataclass(frozen=True, slots=True)
class Handshake:
    """How :meth:`SMTPClient.open` ended.

    ``ok``: ready for transactions. Otherwise ``reply`` is the server's
    refusal (a non-2xx greeting, EHLO+HELO refused, AUTH refused) and
    ``stage`` says which step it answered; the connection is closed.
    """

    reply: Reply
    stage: HandshakeStage
    greeting: Reply
    extensions: Mapping[str, str]
    tls: TLSInfo | None = None
    tls_fallback: str = ""  # opportunistic handshake failure we went on in plaintext after
    authenticated: bool = False

    @property
    def ok(self) -> bool:
        return self.reply.ok


# ----------------------------------------------------------------------------- protocol


class _ReplyReader(asyncio.Protocol):
    """Socket bytes -> bounded, validated replies, read in order with a deadline each.

    A Protocol rather than streams: a pipelined group's replies usually arrive
    in one segment and are parsed in one ``data_received`` call, with no
    coroutine per line; the bounds are checked where the bytes arrive.
    """

    def __init__(self, limits: ReplyLimits) -> None:
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._partial = b""
        self._lines: list[bytes] = []
        self._code = 0
        self._size = 0
        self._replies: collections.deque[tuple[Reply, int]] = collections.deque()
        self._unread = 0
        self._paused = False
        self._error: SMTPClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"connection lost: {exc}" if exc else "connection closed by the server"
        self._fail(ConnectionLost(why), close=False)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._partial:
            data = self._partial + data
        max_line = self.limits.max_line
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if nl + 1 - start > max_line:
                self._fail(ProtocolError(f"reply line longer than {max_line} bytes"))
                return
            end = nl - 1 if nl > start and data[nl - 1] == 13 else nl
            self._line(data[start:end])
            if self._error is not None:
                return
            start = nl + 1
        self._partial = data[start:] if start < len(data) else b""
        if len(self._partial) >= max_line:
            self._fail(ProtocolError(f"reply line longer than {max_line} bytes"))
        elif self._unread > self.limits.max_unread and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _line(self, line: bytes) -> None:
        sep = line[3:4]
        if len(line) < 3 or line[0] not in b"2345" or not line[:3].isdigit() or (
            sep not in (b" ", b"-", b"")
        ):  # fmt: skip
            shown = line[:80].decode("ascii", "replace")
            self._fail(ProtocolError(f"not an SMTP reply line: {shown!r}"))
            return
        code = int(line[:3])
        if self._lines and code != self._code:
            self._fail(ProtocolError(f"reply code changed from {self._code} to {code} mid-reply"))
            return
        self._code = code
        self._lines.append(line[4:])
        self._size += len(line) + 2
        if len(self._lines) > self.limits.max_lines:
            self._fail(ProtocolError(f"reply longer than {self.limits.max_lines} lines"))
            return
        if self._size > self.limits.max_reply:
            self._fail(ProtocolError(f"reply larger than {self.limits.max_reply} bytes"))
            return
        if sep == b"-":
            return
        raw = self._lines[0] if len(self._lines) == 1 else b"\n".join(self._lines)
        text = raw.decode("utf-8", "replace")
        if _CONTROLS.search(text):
            text = _CONTROLS.sub("?", text)
        self._replies.append((Reply.parse(code, text), self._size))
        self._unread += self._size
        self._lines = []
        self._size = 0
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- failures

    def _fail(self, error: SMTPClientError, *, close: bool = True) -> None:
        if self._error is None:
            self._error = error
        for fut in (self._waiter, self._drain_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)
        if close and self.transport is not None:
            self.transport.abort()

    def _wake_drain(self) -> None:
        fut = self._drain_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def error(self) -> SMTPClientError | None:
        return self._error

    def _raise(self, what: str = "") -> None:
        err = self._error
        assert err is not None
        if what and isinstance(err, ConnectionLost):
            raise ConnectionLost(f"{err} while waiting for the reply to {what}")
        raise type(err)(str(err))

    # -- the client's side

    @property
    def pending(self) -> bool:
        """Bytes or replies the server sent that nobody asked for yet."""
        return bool(self._replies or self._partial or self._lines)

    def write(self, data: bytes) -> None:
        if self._error is not None:
            self._raise()
        self.transport.write(data)  # type: ignore[union-attr]

    async def read(self, timeout: float, what: str) -> Reply:
        """The next reply; ReplyTimeout (session closed) if it is not complete in time."""
        if not self._replies:
            if self._error is not None:
                self._raise(what)
            self._waiter = self._loop.create_future()
            try:
                await self._wait(self._waiter, timeout, f"no reply to {what} within {timeout:g}s")
            finally:
                self._waiter = None
            if not self._replies:
                self._raise(what)
        reply, size = self._replies.popleft()
        self._unread -= size
        if self._paused and self._unread <= self.limits.max_unread // 2:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return reply

    async def _wait(self, fut: asyncio.Future[None], timeout: float, why: str) -> None:
        """Until ``fut`` is resolved (by data, drain or failure) or ``timeout`` ends the session."""
        handle = self._loop.call_later(timeout, self._expire, fut, why)
        try:
            await fut
        finally:
            handle.cancel()

    def _expire(self, fut: asyncio.Future[None], why: str) -> None:
        if not fut.done():
            self._fail(ReplyTimeout(why))

    async def drain(self, timeout: float, what: str) -> None:
        """Wait until the transport's write buffer drains (a large body), bounded."""
        if not self._write_paused or self._error is not None:
            return
        self._drain_waiter = self._loop.create_future()
        try:
            await self._wait(
                self._drain_waiter, timeout, f"could not send {what} within {timeout:g}s"
            )
        finally:
            self._drain_waiter = None
        if self._error is not None:
            self._raise()

    def close(self) -> None:
        self._fail(ConnectionLost("connection closed by the client"))


# ----------------------------------------------------------------------------- the client


@dataclass
class _Tx:
    """Replies gathered so far in one transaction (None: not answered yet)."""

    mail: Reply | None = None
    rcpt: list[Reply | None] = field(default_factory=list)
    data: Reply | None = None  # the refusal of DATA, or the reply to the final dot
    crlf_body: bool = False  # the envelope's crlf_body: the body needs dot-stuffing only


class SMTPClient:
    """One SMTP session to one next hop (see the module docstring for the flow)."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        helo_name: str,
        address: str | None = None,
        tls: TLSPolicy | None = None,
        tls_name: str | None = None,
        credentials: Credentials | None = None,
        timeouts: Timeouts | None = None,
        limits: ReplyLimits | None = None,
        pipelining: bool = True,
        source_address: str | None = None,
    ) -> None:
        """``host`` is the name (SNI, certificate check, labels), ``address`` the IP to dial
        (default: ``host``); ``tls_name`` overrides the name the certificate must carry.
        ``pipelining=False`` keeps to lock-step even when the server offers PIPELINING."""
        if not helo_name.isascii() or not helo_name or any(c.isspace() for c in helo_name):
            raise ValueError(f"EHLO name must be one ASCII word, not {helo_name!r}")
        self.host = host
        self.port = port
        self.address = address or host
        self.helo_name = helo_name
        self.tls_policy = tls or TLSPolicy()
        self.tls_name = tls_name or host
        self.credentials = credentials
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or ReplyLimits()
        self.use_pipelining = pipelining
        self.source_address = source_address
        self.extensions: dict[str, str] = {}
        self.tls: TLSInfo | None = None
        self.authenticated = False
        self._proto: _ReplyReader | None = None
        self._ready = False

    @property
    def label(self) -> str:
        """``host[address]:port`` as Postfix logs a peer."""
        return f"{self.host}[{self.address}]:{self.port}"

    @property
    def usable(self) -> bool:
        """Open, past the handshake, and in a clean state for another transaction."""
        p = self._proto
        return self._ready and p is not None and p.error is None and not p.pending

    def supports(self, keyword: str) -> bool:
        """The current EHLO reply lists ``keyword`` (case-insensitive)."""
        return keyword.lower() in self.extensions

    @property
    def pipelining(self) -> bool:
        """Transactions go out as RFC 2920 groups (offered by the server, not turned off)."""
        return self.use_pipelining and "pipelining" in self.extensions

    # -- opening

    async def open(self) -> Handshake:
        """Connect, greeting, EHLO (HELO fallback), STARTTLS per policy, AUTH if configured.

        Returns a :class:`Handshake`; a refusal by the server is ``ok == False``
        with its reply. Raises :class:`SMTPClientError` for failures without a
        reply (network, timeout, garbage, TLS policy, insecure AUTH refused).
        Under ``opportunistic``, a failed TLS handshake is retried once in
        plaintext on a new connection (``Handshake.tls_fallback`` says why).
        """
        try:
            try:
                return await self._open(starttls=self.tls_policy.mode != "none")
            except TLSError as e:
                if self.tls_policy.mode != "opportunistic" or isinstance(e, TLSRequiredError):
                    raise
                hs = await self._open(starttls=False)
                return dataclasses.replace(hs, tls_fallback=str(e))
        except BaseException:
            self.close()
            raise

    async def _open(self, *, starttls: bool) -> Handshake:
        self.close()
        self.extensions, self.tls, self.authenticated, self._ready = {}, None, False, False
        proto = await self._connect()
        greeting = await proto.read(self.timeouts.command, "the greeting")
        if not greeting.ok:
            return await self._refused(greeting, "connect", greeting)
        reply, stage = await self._hello()
        if not reply.ok:
            return await self._refused(reply, stage, greeting)
        if starttls:
            reply, stage = await self._starttls(reply, stage)
            if not reply.ok:
                return await self._refused(reply, stage, greeting)
        if self.credentials is not None:
            refusal = await self._auth()
            if refusal is not None:
                return await self._refused(refusal, "auth", greeting)
        self._ready = True
        return Handshake(reply, stage, greeting, dict(self.extensions), self.tls,
                         authenticated=self.authenticated)  # fmt: skip

    async def _connect(self) -> _ReplyReader:
        loop = asyncio.get_running_loop()
        limits = self.limits
        local = (self.source_address, 0) if self.source_address else None
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, proto = await loop.create_connection(
                    lambda: _ReplyReader(limits), self.address, self.port, local_addr=local
                )
        except TimeoutError:
            raise ConnectFailed(
                f"connect to {self.label}: timed out after {self.timeouts.connect:g}s"
            ) from None
        except OSError as e:
            raise ConnectFailed(f"connect to {self.label}: {e.strerror or e}") from None
        self._proto = proto
        return proto

    async def _refused(self, reply: Reply, stage: HandshakeStage, greeting: Reply) -> Handshake:
        await self.quit()
        return Handshake(reply, stage, greeting, dict(self.extensions), self.tls)

    async def _command(self, line: bytes, what: str) -> Reply:
        """Lock-step: one command, its reply."""
        proto = self._live()
        proto.write(line)
        return await proto.read(self.timeouts.command, what)

    def _live(self) -> _ReplyReader:
        proto = self._proto
        if proto is None:
            raise ConnectionLost("not connected")
        return proto

    async def _hello(self) -> tuple[Reply, HandshakeStage]:
        """EHLO; HELO if EHLO is refused with a 5xx (RFC 5321 section 4.1.4)."""
        name = self.helo_name.encode("ascii")
        reply = await self._command(b"EHLO " + name + b"\r\n", "EHLO")
        if reply.ok:
            self.extensions = _extensions(reply)
            return reply, "ehlo"
        if not reply.permanent:
            return reply, "ehlo"
        reply = await self._command(b"HELO " + name + b"\r\n", "HELO")
        self.extensions = {}
        return reply, "helo"

    async def _starttls(self, hello: Reply, stage: HandshakeStage) -> tuple[Reply, HandshakeStage]:
        """RFC 3207; the EHLO reply the session goes on with (or a 421 ending it)."""
        policy = self.tls_policy
        required = policy.mode == "required"
        if "starttls" not in self.extensions:
            if required:
                raise TLSRequiredError(f"{self.label} does not offer STARTTLS and TLS is required")
            return hello, stage
        try:
            ctx = policy.context()
        except TLSPolicyError as e:
            raise TLSError(str(e)) from None
        assert ctx is not None
        reply = await self._command(b"STARTTLS\r\n", "STARTTLS")
        if reply.code == 421:
            return reply, "starttls"  # the server is closing the session
        if reply.code != 220:
            if required:
                raise TLSRequiredError(f"{self.label} refused STARTTLS: {reply}")
            return hello, stage  # RFC 3207 section 4: go on without TLS
        proto = self._live()
        if proto.pending:
            # Plaintext sent after the 220 would be read as if it came over TLS.
            raise ProtocolError(f"{self.label} sent data after its STARTTLS reply")
        loop = asyncio.get_running_loop()
        try:
            # The name is the SNI and, under 'required', what the certificate must
            # carry (an IP literal is matched against IP subjectAltNames, no SNI).
            transport = await loop.start_tls(
                proto.transport,  # type: ignore[arg-type]
                proto,
                ctx,
                server_hostname=self.tls_name,
                ssl_handshake_timeout=self.timeouts.command,
            )
        except ssl.SSLCertVerificationError as e:
            raise TLSError(
                f"TLS to {self.label}: certificate not trusted for {self.tls_name!r}:"
                f" {e.verify_message or e}"
            ) from None
        except (ssl.SSLError, OSError, TimeoutError) as e:
            raise TLSError(f"TLS handshake with {self.label} failed: {e}") from None
        if transport is None:
            raise TLSError(f"TLS handshake with {self.label} failed: connection closed")
        proto.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            self.tls = policy.check(ssl_object)
        except ssl.SSLCertVerificationError as e:
            raise TLSError(f"TLS to {self.label}: {e}") from None
        # RFC 3207 section 4.2: forget everything learned before TLS, EHLO again.
        self.extensions = {}
        reply = await self._command(b"EHLO " + self.helo_name.encode("ascii") + b"\r\n", "EHLO")
        if reply.ok:
            self.extensions = _extensions(reply)
        return reply, "ehlo"

    async def _auth(self) -> Reply | None:
        """RFC 4954 AUTH PLAIN (or LOGIN); only over TLS the policy verified."""
        creds = self.credentials
        assert creds is not None
        if self.tls is None:
            raise InsecureAuthError(
                f"refusing to authenticate to {self.label} over an unencrypted connection"
            )
        if not self.tls.verified:
            raise InsecureAuthError(
                f"refusing to authenticate to {self.label} over an unverified connection"
                f" (TLS policy {self.tls_policy.mode!r}; credentials need 'required')"
            )
        mechanisms = self.extensions.get("auth", "").upper().split()
        user, password = creds.username.encode(), creds.password.encode()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            reply = await self._command(b"AUTH PLAIN " + token + b"\r\n", "AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            reply = await self._command(b"AUTH LOGIN\r\n", "AUTH LOGIN")
            for secret in (user, password):
                if reply.code != 334:
                    break
                reply = await self._command(base64.b64encode(secret) + b"\r\n", "AUTH LOGIN")
        else:
            offered = " ".join(mechanisms) or "no AUTH"
            raise AuthError(f"{self.label} offers {offered}; we speak AUTH PLAIN and LOGIN")
        if reply.code == 235:
            self.authenticated = True
            return None
        if reply.code == 334:  # a challenge we cannot answer: cancel the exchange
            reply = await self._command(b"*\r\n", "AUTH cancel")
            raise AuthError(f"{self.label} AUTH did not complete: {reply}")
        return reply

    # -- transactions

    async def send(self, envelope: Envelope, body: bytes | Awaitable[bytes]) -> TransactionResult:
        """One transaction; a result per recipient. Never raises for network trouble.

        ``body`` is the message (CRLF lines, not dot-stuffed) or an awaitable of
        it, awaited while the server answers MAIL/RCPT (a queue read overlaps the
        round trip); it is not awaited when no recipient is accepted.
        """
        if not self.usable:
            raise ConnectionLost(f"session with {self.label} is not ready for a transaction")
        local = self._local_refusal(envelope)
        if local is not None:
            if inspect.iscoroutine(body):
                body.close()  # never needed
            return self._result(envelope, _Tx(mail=local), pipelined=False)
        mail, rcpts = self._commands(envelope)
        tx = _Tx(rcpt=[None] * len(rcpts), crlf_body=envelope.crlf_body)
        pipelined = self.pipelining
        task = None
        if not isinstance(body, bytes | asyncio.Future):
            body = task = asyncio.ensure_future(body)  # runs while the server answers
        try:
            if pipelined:
                await self._pipelined(tx, mail, rcpts, body)
            else:
                await self._lockstep(tx, mail, rcpts, body)
        except SMTPClientError as e:
            self.close()
            return self._result(envelope, tx, pipelined=pipelined, error=str(e),
                                ending=_lost(str(e), e.status))  # fmt: skip
        except BaseException:
            self.close()  # cancelled mid-transaction: the session state is unknown
            raise
        finally:
            if task is not None:
                if not task.done():
                    task.cancel()  # ours, and not needed (no recipient accepted)
                elif not task.cancelled():
                    task.exception()  # seen (it only matters after a 354)
        ending = _session_end(tx)
        if ending is not None:
            self.close()  # RFC 5321 section 3.8: the server is closing the session
            why = f"the server ended the session: {ending}"
            return self._result(envelope, tx, pipelined=pipelined, error=why, ending=ending)
        error = ""
        if tx.data is None or not tx.data.ok:
            error = await self._rset()
        if not error and not self.usable:
            proto = self._proto
            failed = proto.error if proto is not None else None
            error = str(failed) if failed else "the server sent replies nobody asked for"
            self.close()
        return self._result(envelope, tx, pipelined=pipelined, error=error)

    def _local_refusal(self, env: Envelope) -> Reply | None:
        """Checks that make sending pointless: a refusal to report instead."""
        needs_utf8 = not env.mail_from.isascii() or any(
            not r.address.isascii() for r in env.recipients
        )
        if needs_utf8 and not (env.smtputf8 and "smtputf8" in self.extensions):
            # RFC 6531 section 3.4: a non-ASCII address cannot go to this server.
            text = "5.6.7 the next hop does not support SMTPUTF8"
            return Reply(553, "5.6.7", text, synthetic=True)
        limit = self.extensions.get("size", "")
        if env.size is not None and limit.isdigit() and 0 < int(limit) < env.size:
            text = f"5.3.4 message size {env.size} exceeds the next hop's limit of {limit}"
            return Reply(552, "5.3.4", text, synthetic=True)
        return None

    def _commands(self, env: Envelope) -> tuple[bytes, list[bytes]]:
        ext = self.extensions
        dsn = "dsn" in ext
        opts = []
        if env.size is not None and "size" in ext:
            opts.append(f" SIZE={env.size}")
        if env.body_8bit and "8bitmime" in ext:
            opts.append(" BODY=8BITMIME")
        if env.smtputf8 and "smtputf8" in ext:
            opts.append(" SMTPUTF8")
        if dsn:
            if env.ret:
                opts.append(f" RET={env.ret.upper()}")
            if env.envid:
                opts.append(f" ENVID={xtext.encode(env.envid)}")
        mail = f"MAIL FROM:<{env.mail_from}>{''.join(opts)}\r\n".encode()
        rcpts = []
        for r in env.recipients:
            ropts = ""
            if dsn:
                if r.notify:
                    ropts += f" NOTIFY={','.join(n.upper() for n in r.notify)}"
                if r.orcpt:
                    ropts += " " + orcpt_param(r.orcpt)
            rcpts.append(f"RCPT TO:<{r.address}>{ropts}\r\n".encode())
        return mail, rcpts

    async def _pipelined(
        self, tx: _Tx, mail: bytes, rcpts: list[bytes], body: bytes | Awaitable[bytes]
    ) -> None:
        """RFC 2920: MAIL, every RCPT and DATA in one write; the replies in that order."""
        proto = self._live()
        t = self.timeouts.command
        proto.write(b"".join((mail, *rcpts, b"DATA\r\n")))
        tx.mail = await proto.read(t, "MAIL FROM")
        if tx.mail.code == 421:
            return
        for i in range(len(rcpts)):
            reply = await proto.read(t, "RCPT TO")
            tx.rcpt[i] = reply
            if reply.code == 421:
                return
        reply = await proto.read(t, "DATA")
        if reply.code == 421:
            tx.data = reply
            return
        accepted = tx.mail.ok and any(r is not None and r.ok for r in tx.rcpt)
        if reply.code == 354 and not accepted:
            # RFC 2920 section 3.1: DATA must be refused when no RCPT was accepted;
            # a server that says 354 anyway gets an empty message ended at once.
            proto.write(b".\r\n")
            end = await proto.read(self.timeouts.data, "end of data")
            if end.code == 421:
                tx.data = end
            return
        await self._data(tx, reply, accepted, body)

    async def _lockstep(
        self, tx: _Tx, mail: bytes, rcpts: list[bytes], body: bytes | Awaitable[bytes]
    ) -> None:
        """Without PIPELINING: each command waits for the previous reply."""
        tx.mail = await self._command(mail, "MAIL FROM")
        if not tx.mail.ok:
            return
        for i, rcpt in enumerate(rcpts):
            reply = await self._command(rcpt, "RCPT TO")
            tx.rcpt[i] = reply
            if reply.code == 421:
                return
        if not any(r is not None and r.ok for r in tx.rcpt):
            return
        reply = await self._command(b"DATA\r\n", "DATA")
        await self._data(tx, reply, True, body)

    async def _data(
        self, tx: _Tx, reply: Reply, accepted: bool, body: bytes | Awaitable[bytes]
    ) -> None:
        """After the reply to DATA: the body and the final dot, or the refusal."""
        if not accepted:
            return  # DATA refused, as it must be with no recipient (503/554)
        if reply.code != 354:
            if reply.code < 400:
                raise ProtocolError(f"unexpected reply to DATA: {reply}")
            tx.data = reply
            return
        if not isinstance(body, bytes):
            try:
                body = await body
            except Exception as e:
                # The server waits for a body we do not have: only closing ends DATA
                # without delivering a truncated message.
                raise _BodyUnavailable(f"message body unavailable: {e}") from None
        proto = self._live()
        proto.write(wire_data(body, normalised=tx.crlf_body))
        await proto.drain(self.timeouts.command, "the message body")
        tx.data = await proto.read(self.timeouts.data, "end of data")

    async def _rset(self) -> str:
        """RSET after a transaction that did not end with the final dot; '' if it worked."""
        try:
            reply = await self._command(b"RSET\r\n", "RSET")
        except SMTPClientError as e:
            self.close()
            return str(e)
        if reply.code != 250:
            self.close()
            return f"RSET refused: {reply}"
        return ""

    def _result(
        self, env: Envelope, tx: _Tx, *, pipelined: bool, error: str = "",
        ending: Reply | None = None,
    ) -> TransactionResult:  # fmt: skip
        """Each recipient's final reply; ``ending`` for those the session left without one."""
        out: list[RecipientResult] = []
        lost = ending or _lost("no reply")
        for i, r in enumerate(env.recipients):
            rcpt = tx.rcpt[i] if i < len(tx.rcpt) else None
            if tx.mail is None:
                out.append(RecipientResult(r, lost, "mail"))
            elif not tx.mail.ok:
                out.append(RecipientResult(r, tx.mail, "mail"))
            elif rcpt is None:
                out.append(RecipientResult(r, lost, "rcpt"))
            elif not rcpt.ok:
                out.append(RecipientResult(r, rcpt, "rcpt"))  # a verdict given stays given
            elif tx.data is not None:
                out.append(RecipientResult(r, tx.data, "data"))
            else:
                out.append(RecipientResult(r, lost, _ending_stage(tx)))
        return TransactionResult(tuple(out), self.usable, pipelined, error)

    # -- closing

    async def quit(self) -> None:
        """QUIT (bounded wait for 221), then close. Never raises."""
        proto = self._proto
        if proto is not None and proto.error is None:
            with contextlib.suppress(SMTPClientError):
                proto.write(b"QUIT\r\n")
                await proto.read(self.timeouts.quit, "QUIT")
        self.close()

    def close(self) -> None:
        """Drop the connection at once (no QUIT)."""
        self._ready = False
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.close()

    async def __aenter__(self) -> SMTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.quit()


def _session_end(tx: _Tx) -> Reply | None:
    """A 421 the server sent in this transaction (it closes the session), if any."""
    for reply in (tx.mail, *tx.rcpt, tx.data):
        if reply is not None and reply.code == 421:
            return reply
    return None


def _ending_stage(tx: _Tx) -> Stage:
    if tx.data is not None or all(r is not None for r in tx.rcpt):
        return "data"
    return "rcpt"


def _extensions(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (lowercase) -> their parameters; the first line is the greeting."""
    out: dict[str, str] = {}
    for line in ehlo.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword[:5].upper() == "AUTH=":  # the pre-RFC 4954 form some servers still send
            keyword, params = "AUTH", keyword[5:] + " " + params
        if keyword and keyword.replace("-", "").isalnum() and keyword.isascii():
            key = keyword.lower()
            out[key] = f"{out[key]} {params}".strip() if key in out else params.strip()
    return out
