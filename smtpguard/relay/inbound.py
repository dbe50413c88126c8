"""The relay's inbound SMTP server: what Postfix (``relayhost``) talks to.

Built on aiosmtpd's :class:`~aiosmtpd.smtp.SMTP` protocol, served by
``loop.create_server`` on the running loop (no Controller thread: the queue
and the delivery engine share this loop). aiosmtpd does the command reading,
STARTTLS and SASL exchanges; this module adds what a relay in front of the
Internet needs and aiosmtpd leaves to the application, and replaces two of
its hot paths (the relay's CPU per message is what limits it behind Postfix):

* **Message data** is read with one ``readuntil(CRLF.CRLF)`` per message (or
  per 256 KiB chunk of a big one) instead of one read per line, then
  dot-unstuffed (RFC 5321 section 4.5.2) in one pass: :meth:`RelaySMTP._read_data`.
* **Replies** produced in the same loop tick leave in one segment: with
  PIPELINING (RFC 2920) the replies to MAIL, RCPT and DATA cost one send()
  instead of three (:meth:`RelaySMTP.push`).

* **Never an open relay.** A client may relay when its address is in
  ``relay.trusted_networks`` (default: loopback only) or after SMTP AUTH
  (``relay.auth_users_file``). Anyone else gets ``554 5.7.1 Relay access
  denied`` at RCPT (every recipient is remote: smtpguard has no local domains).
* **AUTH only over an encrypted or local channel.** AUTH PLAIN/LOGIN is offered
  after STARTTLS, or on a loopback connection (there is no wire to sniff
  there), never in clear text over the network (RFC 4954 section 4; a client
  trying anyway gets ``538 5.7.11``). Without a users file there is no AUTH.
  At most 5 AUTH commands per connection (then ``421``) slow down guessing.
* **ESMTP as Postfix expects it** (RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531
  SMTPUTF8, RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES, RFC 3461 DSN,
  RFC 3207 STARTTLS). aiosmtpd's MAIL and RCPT handlers upper-case every
  parameter and refuse unknown ones, which would destroy ENVID/ORCPT, so both
  commands are reimplemented here with strict RFC 5321 path syntax.
* **Enhanced status codes on every reply** (RFC 2034 section 3): aiosmtpd's
  own replies ("250 OK", "552 Error: Too much mail data"...) get the matching
  code inserted in :meth:`RelaySMTP.push`.
* **No SMTP smuggling.** DATA ends only at ``<CRLF>.<CRLF>`` (as in
  aiosmtpd >= 1.4.6); every other end-of-data look-alike (``<LF>.<LF>``,
  ``<LF>.<CRLF>``, ``<CR>.<CR>``, ``<CRLF>.<LF>``...) stays message content.
  Because a next hop might read such a sequence differently, a bare CR or LF
  is never passed on: stored data is **normalised to CRLF** (each bare CR and
  each bare LF becomes one CRLF). That is what most relays do, and it is
  exactly what aiosmtplib does when the delivery side sends the message, so
  what is queued is what will be sent. (Postfix's ``smtpd_forbid_bare_newline
  = reject`` refuses such mail instead; our clients are trusted MTAs, and
  bouncing their mail over line-ending style would help nobody.)
  A smuggled ``MAIL FROM`` after a fake end-of-data is therefore never a
  second message: it is a text line of the first one.
* **Limits with the right replies**: SIZE too big at MAIL and too much data
  both ``552 5.3.4``; the recipient after ``relay.max_recipients`` gets
  ``452 4.5.3`` (RFC 5321 section 4.5.3.1.10: the client sends the rest in a
  new transaction); a command line longer than ``relay.max_line_length``
  gets ``500 5.5.2 Line too long``; a message with a longer data line is
  read to its end and refused with the same ``500 5.5.2`` (RFC 5321 section
  4.5.3.1.10 names "500 Line too long" for exactly this; nothing is queued,
  because folding the line would change the content and break signatures).
  Line lengths count the octets before CRLF. An idle client gets ``421
  4.4.2`` and is disconnected; the session after ``relay.max_sessions`` gets
  ``421 4.7.0`` at once.
* **Suppression at RCPT**: a suppressed recipient is refused with
  ``relay.suppressed_reply`` and a text saying why and since when, so Postfix
  bounces to the sender itself; a failing lookup answers ``451 4.3.0``.
* **250 only after the queue committed.** After the final dot the message is
  handed to ``enqueue`` (durable commit); any exception becomes ``451 4.3.0``,
  so Postfix keeps the message and retries. A ``Received:`` line (RFC 5321
  section 4.4) is prepended; every client-chosen part of it (HELO name,
  address) is checked against a strict character set first, so nothing a
  client sends can start a new header line.
* **Shutdown** (:meth:`InboundServer.stop`): the listener closes, idle
  sessions get ``421 4.3.2`` at once, sessions inside a transaction finish it
  (up to the timeout) and get ``421 4.3.2`` right after their reply.

Addresses: validated with :func:`smtpguard.address.normalize_address` (the
suppression key, local part lowercased); what is queued for delivery keeps the
local part exactly as the client sent it (RFC 5321 section 2.4: only the
destination host may interpret its case) with the domain normalised.
Duplicate recipients in one transaction are accepted and queued once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client import Counter, Gauge

from smtpguard.address import normalize_address, normalize_domain
from smtpguard.config import Config, parse_hostport
from smtpguard.errors import AddressError, ConfigError
from smtpguard.relay.envelope import InboundMessage, Recipient

log = logging.getLogger("smtpguard.inbound")

SESSIONS = Gauge("smtpguard_inbound_sessions", "Inbound SMTP sessions open right now.")
REFUSALS = Counter(
    "smtpguard_inbound_refusals_total",
    "Inbound sessions, recipients or messages refused, by reason.",
    ["reason"],
)
# Bound once: a labelled child costs a dict lookup per use otherwise.
_REFUSED = {
    reason: REFUSALS.labels(reason)
    for reason in (
        "relay_denied", "suppressed", "too_many_recipients", "lookup_failed",
        "storage_failed", "too_many_sessions", "idle_timeout",
    )
}  # fmt: skip

Enqueue = Callable[[InboundMessage], Awaitable[str]]
Lookup = Callable[[str], Awaitable[Any]]  # -> SuppressionEntry | None

#: RFC 3461 section 4.4 / 4.2: longest ENVID and ORCPT values (encoded form).
MAX_ENVID = 100
MAX_ORCPT = 500
#: Longest suppression diagnostic quoted back in a RCPT reply (the whole reply
#: stays well inside RFC 5321 section 4.5.3.1.5's 512-octet reply line).
MAX_QUOTED_DIAGNOSTIC = 200
#: RFC 4954 brute-force brake: AUTH commands allowed per connection.
MAX_AUTH_PER_CONNECTION = 5
#: RFC 5321 section 4.1.1.4: the end of mail data.
DATA_END = b"\r\n.\r\n"
#: Message data taken per readuntil(); a typical message arrives in one.
DATA_CHUNK = 256 * 1024
#: Reply codes written at once (push): the connection may close right after them.
_WRITE_AT_ONCE = frozenset({"220", "221", "421", "502"})

# --------------------------------------------------------------------------- pure helpers

# RFC 1869 section 6 / RFC 5321 section 4.1.2: esmtp-keyword and esmtp-value.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# esmtp-value = 1*(%d33-60 / %d62-126), extended by RFC 6531 section 3.3 to UTF-8.
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
# RFC 3461 section 4: xtext = *( xchar / hexchar ); hexchar = "+" 2(%x30-39 / %x41-46).
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# RFC 6533 section 3: EmbeddedUnicodeChar in utf-8-addr-xtext.
_EMBEDDED_UNICODE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |\Z)")
# Bare CR or bare LF (anything but a CRLF pair), RFC 5321 section 2.3.8.
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
# What may appear of a client-chosen name inside a generated header.
_HELO_SAFE = re.compile(r"[A-Za-z0-9.:\[\]_-]{1,255}\Z")
_HEADER_SAFE_ADDR = re.compile(r"[^\x00-\x20\x7f<>()\\;]+\Z")
_AUTO_SUBMITTED = re.compile(rb"(?im)^auto-submitted[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
_COMMENT = re.compile(r"\([^()]*\)")

NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class ParamError(ValueError):
    """A malformed ESMTP parameter; ``reply`` is the full SMTP reply."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 section 4 xtext (``+2B`` is ``+``); ParamError if malformed."""
    if not _XTEXT.match(value):
        raise ParamError("501 5.5.4 Malformed xtext in parameter value")
    if "+" not in value:
        return value
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)


def split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` into the path's inside and the parameter text.

    RFC 5321 section 4.1.2: ``Path = "<" [ A-d-l ":" ] Mailbox ">"``; the
    angle brackets are required (strict: Postfix always sends them). A quoted
    local part may contain ``>``, so quotes and backslash pairs are honoured.
    Raises ValueError when there is no well-formed ``<...>``.
    """
    text = arg.lstrip(" ")
    if not text.startswith("<"):
        raise ValueError("path must be in angle brackets")
    quoted = escaped = False
    for i in range(1, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise ValueError("garbage after path")
            return text[1:i], rest.strip(" ")
    raise ValueError("unterminated path")


def parse_params(text: str) -> dict[str, str | None]:
    """``SIZE=10 BODY=8BITMIME SMTPUTF8`` -> ``{"SIZE": "10", ..., "SMTPUTF8": None}``.

    Keywords are case-insensitive (upper-cased here); values keep their case
    (ENVID and ORCPT are case-sensitive). Duplicates and malformed pairs are
    501 5.5.4 (RFC 3463: invalid command arguments).
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise ParamError(f"501 5.5.4 Malformed parameter {_printable(item[:40])}")
        key = key.upper()
        if key in params:
            raise ParamError(f"501 5.5.4 Duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def parse_notify(value: str | None) -> tuple[str, ...]:
    """RFC 3461 section 4.1: ``NEVER`` alone, or a list of SUCCESS/FAILURE/DELAY."""
    if not value:
        raise ParamError("501 5.5.4 NOTIFY requires a value")
    items = value.upper().split(",")
    if items == ["NEVER"]:
        return ("NEVER",)
    if "NEVER" in items or not set(items) <= NOTIFY_VALUES:
        raise ParamError("501 5.5.4 NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY")
    return tuple(dict.fromkeys(items))


def parse_orcpt(value: str | None) -> str:
    """RFC 3461 section 4.2 ``ORCPT=addr-type;xtext`` -> ``"rfc822;user@example.com"``.

    The ``utf-8`` address type (RFC 6533 section 3) carries ``\\x{HEX}``
    escapes or, under SMTPUTF8, raw UTF-8; both are decoded. The result never
    holds a control character (it ends up in a DSN header).
    """
    if not value or len(value) > MAX_ORCPT:
        raise ParamError("501 5.5.4 ORCPT requires addr-type;address (at most 500 octets)")
    addr_type, sep, encoded = value.partition(";")
    if not sep or not encoded or not _ADDR_TYPE.match(addr_type):
        raise ParamError("501 5.5.4 ORCPT requires addr-type;address")
    if addr_type.lower() == "utf-8":
        if "+" in encoded or "=" in encoded:
            raise ParamError("501 5.5.4 Malformed utf-8-addr-xtext in ORCPT")
        try:
            decoded = _EMBEDDED_UNICODE.sub(lambda m: chr(int(m.group(1), 16)), encoded)
        except (ValueError, OverflowError):
            raise ParamError("501 5.5.4 Malformed utf-8-addr-xtext in ORCPT") from None
    else:
        decoded = xtext_decode(encoded)
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in decoded):
        raise ParamError("501 5.5.4 ORCPT contains control characters")
    return f"{addr_type};{decoded}"


def normalise_line_endings(data: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF; fast path when there are none."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _LINE_ENDINGS.sub(b"\r\n", data)


def unstuff(raw: bytes) -> bytes:
    """Undo RFC 5321 section 4.5.2 transparency: a line's leading "." goes.

    Lines are what CRLF separates (a bare LF does not start a line, as in
    aiosmtpd); ``raw`` is data as received, without the final ".CRLF".
    """
    if raw[:1] == b".":
        raw = raw[1:]
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n")
    return raw


def _partial_end(data: bytes) -> int:
    """Length of the longest proper prefix of CRLF.CRLF that ``data`` ends with."""
    for k in (4, 3, 2, 1):
        if data.endswith(DATA_END[:k]):
            return k
    return 0


def is_auto_submitted(data: bytes) -> bool:
    """True if the header section has ``Auto-Submitted`` other than ``no`` (RFC 3834 s. 5)."""
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    if b"uto-" not in header and b"UTO-" not in header:
        return False
    for m in _AUTO_SUBMITTED.finditer(header):
        value = m.group(1).decode("ascii", "replace").replace("\r\n", "")
        value = _COMMENT.sub(" ", value).strip().lower()
        if value != "no":
            return True
    return False


def _printable(text: str) -> str:
    """ASCII-only, control-free form of client or stored text for a reply line."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def suppressed_reply(code: str, address: str, entry: Any) -> str:
    """``550 5.1.1 <a@b>: recipient suppressed by smtpguard: userunknown since ... (diag)``."""
    evidence = entry.diagnostic or f"{entry.reply_code} {entry.status}".strip()
    evidence = " ".join(_printable(evidence).split())
    if len(evidence) > MAX_QUOTED_DIAGNOSTIC:
        evidence = evidence[: MAX_QUOTED_DIAGNOSTIC - 3] + "..."
    text = (
        f"{code} <{_printable(address)}>: recipient suppressed by smtpguard: "
        f"{_printable(entry.reason)} since {_iso(entry.first_seen)}"
    )
    return f"{text} ({evidence})" if evidence else text


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    recipient: str | None,
    when: float,
) -> bytes:
    """An RFC 5321 section 4.4 trace line; client-chosen text cannot inject a newline.

    The HELO name is kept only if it consists of domain / address-literal
    characters (else ``unknown``); the single recipient's ``for`` clause only
    if the address has no whitespace, controls or header specials.
    """
    helo_text = helo if _HELO_SAFE.match(helo) else "unknown"
    ip = client_ip if _HELO_SAFE.match(client_ip) else "unknown"
    lines = f"Received: from {helo_text} (unknown [{ip}])\r\n\tby {hostname} (smtpguard)"
    lines += f" with {protocol}"
    if recipient and _HEADER_SAFE_ADDR.match(recipient):
        lines += f"\r\n\tfor <{recipient}>"
    stamp = format_datetime(datetime.fromtimestamp(when, UTC))
    return f"{lines};\r\n\t{stamp}\r\n".encode()


def load_users(path: str) -> dict[str, bytes]:
    """Read ``user:password`` lines (``#`` comments and blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"relay.auth_users_file: cannot read {path}: {e}") from None
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{path}:{number}: expected 'user:password'")
        users[user] = password.encode("utf-8")
    return users


def _tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not cert:
        raise ConfigError("relay.tls_key is set but relay.tls_cert is empty")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"relay.tls_cert/tls_key: cannot load {cert}: {e}") from None
    return ctx


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


class RelaySMTP(SMTP):
    """One inbound SMTP session (an asyncio protocol, one per connection)."""

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ finds its commands and AUTH mechanisms with
        # dir()/inspect.getmembers() on every new connection, which costs about a
        # quarter of a millisecond on a class this size. Those scans only look for
        # smtp_* and auth_* names, so dir() lists just those (computed once).
        return _PROTOCOL_NAMES

    def __init__(self, server: InboundServer, loop: asyncio.AbstractEventLoop) -> None:
        relay = server.cfg.relay
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
        self.server = server
        self.rejected = False
        self.trusted = False
        self.loopback = False
        self.client_ip = ""
        self.in_data = False
        self.committing = False
        self._last_activity = loop.time()
        self._deadline = 0.0
        super().__init__(
            server.hooks,
            hostname=relay.hostname,
            ident="ESMTP smtpguard",
            data_size_limit=relay.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=server.tls_context,
            timeout=relay.idle_timeout,
            auth_require_tls=True,
            authenticator=server.authenticate,
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
        self.trusted, self.loopback = self.server.classify_peer(self.client_ip)
        # AUTH in clear text only where there is no wire to sniff.
        self._auth_require_tls = not self.loopback
        self.rejected = not self.server.register(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.server.unregister(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels and re-creates a timer for every command; here the
        # deadline just moves, and a timer that fires early re-arms itself.
        now = self.loop.time()
        deadline = now + (duration or self._timeout_duration)
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled() and now < handle.when() <= deadline:
            return  # the pending timer fires first and re-arms itself
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)

    def _timeout_cb(self) -> None:
        # aiosmtpd restarts its timer only on valid commands. During DATA any
        # received octet counts as activity too (a big message on a slow link), and
        # a pending commit is our wait, not the client's. Garbage outside DATA does
        # not keep a session alive.
        now = self.loop.time()
        if now < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_cb)
            return
        idle = now - self._last_activity
        if self.committing or (self.in_data and idle < self._timeout_duration):
            self._reset_timeout(max(self._timeout_duration - idle, 0.05))
            return
        log.info("%s: idle timeout, disconnecting", self.client_ip)
        _REFUSED["idle_timeout"].inc()
        self._goodbye(f"421 4.4.2 {self.hostname} Error: timeout exceeded")

    async def _handle_client(self) -> None:
        if self.rejected:
            _REFUSED["too_many_sessions"].inc()
            await self.push(f"421 4.7.0 {self.hostname} Error: too many connections")
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
            if status[3:4] == " " and code in _DEFAULT_ENHANCED and not _ENHANCED.match(status, 4):
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
        if self.server.stopping and not self.in_transaction:
            # Shutdown: a transaction just ended (RFC 5321 section 3.8: 421 may come any time).
            self.close_for_shutdown()

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
        if self.server.users and (self._tls_protocol or self.loopback):
            lines.append("AUTH PLAIN LOGIN")
        await self._write_lines(lines)

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.envelope is not None
        if not self.server.users:
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
            params = parse_params(param_text)
            if params and not session.extended_smtp:
                raise ParamError("501 5.5.4 Parameters need EHLO")
            smtputf8 = "SMTPUTF8" in params
            if smtputf8 and params.pop("SMTPUTF8") is not None:
                raise ParamError("501 5.5.4 SMTPUTF8 takes no value")
            body = (params.pop("BODY", None) or "7BIT").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise ParamError("501 5.5.4 BODY must be 7BIT or 8BITMIME")
            if "SIZE" in params:
                size = params.pop("SIZE")
                if not size or not size.isdigit() or len(size) > 20:
                    raise ParamError("501 5.5.4 SIZE requires a number")
                if self.data_size_limit and int(size) > self.data_size_limit:
                    raise ParamError("552 5.3.4 Message size exceeds fixed maximum message size")
            ret = ""
            if "RET" in params:
                ret = (params.pop("RET") or "").upper()
                if ret not in ("FULL", "HDRS"):
                    raise ParamError("501 5.5.4 RET must be FULL or HDRS")
            envid = ""
            if "ENVID" in params:
                raw = params.pop("ENVID") or ""
                if not raw or len(raw) > MAX_ENVID:
                    raise ParamError("501 5.5.4 ENVID requires 1-100 octets of xtext")
                envid = xtext_decode(raw)
                # RFC 3461 section 4.4: printable US-ASCII only (it goes into a DSN).
                if not all(" " <= c <= "~" for c in envid):
                    raise ParamError("501 5.5.4 ENVID must be printable ASCII")
            params.pop("AUTH", None)  # RFC 4954 section 5: accepted, not trusted
            if params:
                raise ParamError(
                    f"555 5.5.4 Unsupported MAIL parameter {_printable(next(iter(params)))}"
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
            if not smtputf8 and not address.isascii():
                await self.push("553 5.6.7 Non-ASCII sender address requires SMTPUTF8")
                return
        envelope.mail_from = address
        envelope.smtp_utf8 = smtputf8
        envelope.body = "8BITMIME" if body == "8BITMIME" else "7BIT"
        envelope.ret = ret
        envelope.envid = envid
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
            params = parse_params(param_text)
            if params and not session.extended_smtp:
                raise ParamError("501 5.5.4 Parameters need EHLO")
            notify = parse_notify(params.pop("NOTIFY")) if "NOTIFY" in params else ()
            orcpt = parse_orcpt(params.pop("ORCPT")) if "ORCPT" in params else ""
            if params:
                raise ParamError(
                    f"555 5.5.4 Unsupported RCPT parameter {_printable(next(iter(params)))}"
                )
        except ParamError as e:
            await self.push(e.reply)
            return
        shown = _printable(address)
        if not (self.trusted or session.authenticated):
            log.info("%s: relay denied for <%s>", self.client_ip, shown)
            _REFUSED["relay_denied"].inc()
            await self.push(f"554 5.7.1 <{shown}>: Relay access denied")
            return
        if len(envelope.recipients) >= self.server.cfg.relay.max_recipients:
            _REFUSED["too_many_recipients"].inc()
            await self.push("452 4.5.3 Error: too many recipients")
            return
        try:
            entry = await self.server.lookup(key)
        except Exception:
            log.exception("suppression lookup failed for <%s>", shown)
            _REFUSED["lookup_failed"].inc()
            await self.push("451 4.3.0 Temporary lookup failure, try again")
            return
        if entry is not None:
            _REFUSED["suppressed"].inc()
            await self.push(suppressed_reply(self.server.cfg.relay.suppressed_reply, key, entry))
            return
        if key not in envelope.seen:
            envelope.seen.add(key)
            envelope.recipients.append(Recipient(address=address, notify=notify, orcpt=orcpt))
            envelope.rcpt_tos.append(address)
        await self.push("250 2.1.5 Ok")

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not self.envelope.rcpt_tos:
            # With PIPELINING the client sends DATA after all RCPTs were refused.
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        try:
            raw, error = await self._read_data()
        except asyncio.CancelledError:
            # The connection went away during DATA (aiosmtpd cancels the handler).
            self._writer.close()
            raise
        finally:
            self.in_data = False
        if error is not None:
            self._set_post_data_state()
            await self.push(error)
            return
        content = unstuff(raw)
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """Read message data up to ``<CRLF>.<CRLF>``: (raw, still dot-stuffed content, error).

        RFC 5321 section 4.1.1.4: only ``<CRLF>.<CRLF>`` ends the data, and the
        CRLF that ended the DATA command line counts as the first CRLF, so a
        "." first thing is an empty message. Any other look-alike (bare CR or
        LF around a dot) is content: no smuggling. The content keeps the CRLF
        that ends its last line.

        Instead of one readuntil() per line (aiosmtpd), one readuntil() takes
        the whole message when it fits in the stream limit, else chunks of it.
        Only the start needs care: the command's CRLF was consumed already, so
        while what was read so far (with that CRLF in front) ends in a proper
        prefix of the end sequence, just enough to complete or refute it is
        read (readexactly(), or through the next LF after a CR). From then on
        readuntil() sees every possible end: a chunk it gives up on
        (LimitOverrunError) never holds the start of one.

        Errors are decided after the end was read (RFC 5321 section 4.2.5: the
        reply comes after the final dot): ``552 5.3.4`` once more than the size
        limit arrived (data dropped from then on), ``500 5.5.2`` for a line over
        ``relay.max_line_length`` octets (section 4.5.3.1.6; folding would break
        signatures, so the message is refused, not altered).
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        parts: list[bytes] = []
        size = 0  # octets of content received so far
        error: str | None = None

        def take(chunk: bytes) -> None:
            nonlocal size, error
            size += len(chunk)
            if error is None:
                parts.append(chunk)
                if limit and size > limit:  # from now on the data is only counted
                    error = self._data_error(b"".join(parts), size, limit)
                    parts.clear()

        # Phase 1: piece by piece while the data so far (with the command's CRLF in
        # front) ends in a proper prefix of CRLF.CRLF. Only the last five octets
        # matter, so anything before them is handed on.
        got = bytearray()
        while True:
            end = bytes(got[-5:]) if len(got) >= 5 else b"\r\n" + bytes(got)
            if end.endswith(DATA_END):
                del got[-3:]  # ".CRLF"; the CRLF before it ends the last line
                take(bytes(got))
                return self._finish_data(parts, size, limit, error)
            k = _partial_end(end)
            if k == 0:
                take(bytes(got))
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
        # up on (LimitOverrunError) never holds the start of one.
        while True:
            try:
                chunk = await reader.readuntil(DATA_END)
            except asyncio.LimitOverrunError as e:
                take(await reader.read(e.consumed))
                continue
            take(chunk[:-3])
            return self._finish_data(parts, size, limit, error)

    def _finish_data(
        self, parts: list[bytes], size: int, limit: int, error: str | None
    ) -> tuple[bytes, str | None]:
        if error is not None:
            return b"", error
        raw = b"".join(parts) if len(parts) != 1 else parts[0]
        return raw, self._data_error(raw, size, limit)

    def _data_error(self, raw: bytes, size: int, limit: int) -> str | None:
        """The reply refusing this data, or None: the first problem in the data wins."""
        longest = self.max_data_line
        if len(raw) > longest and max(map(len, raw.split(b"\r\n"))) > longest:
            return "500 5.5.2 Line too long"
        if limit and size > limit:
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        return None

    async def smtp_VRFY(self, arg: str) -> None:
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

    def __init__(self, server: InboundServer) -> None:
        self.server = server

    async def handle_DATA(self, proto: RelaySMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, RelayEnvelope)
        return await self.server.accept(proto, session, envelope)

    async def handle_exception(self, error: Exception) -> str:
        log.error("inbound session error: %r", error, exc_info=error)
        return "451 4.3.0 Internal error, try again"


# --------------------------------------------------------------------------- server


class InboundServer:
    """The relay's listening SMTP server (see the module docstring for behaviour)."""

    def __init__(self, cfg: Config, *, enqueue: Enqueue, lookup: Lookup) -> None:
        self.cfg = cfg
        self.enqueue = enqueue
        self.lookup = lookup
        relay = cfg.relay
        self.host, self._port = _listen_address(relay.listen)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in relay.trusted_networks]
        self.users = load_users(relay.auth_users_file) if relay.auth_users_file else {}
        self.tls_context = _tls_context(relay.tls_cert, relay.tls_key)
        self.hooks = _Hooks(self)
        self.sessions: set[RelaySMTP] = set()
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._peer_cache: dict[str, tuple[bool, bool]] = {}

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # aiosmtpd logs every command at INFO on "mail.log"; per-line logging costs
        # throughput, so it stays quiet unless the operator configured it.
        mail_log = logging.getLogger("mail.log")
        if mail_log.level == logging.NOTSET:
            mail_log.setLevel(logging.WARNING)
        if _QUIET_DEPRECATION not in mail_log.filters:
            mail_log.addFilter(_QUIET_DEPRECATION)
        self._server = await loop.create_server(
            lambda: RelaySMTP(self, loop),
            host=self.host,
            port=self._port,
            reuse_address=True,
            backlog=max(100, self.cfg.relay.max_sessions),
        )
        log.info("inbound SMTP listening on %s port %d", self.host, self.port)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting; sessions in a transaction may finish within ``timeout``."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for proto in list(self.sessions):
            proto.close_for_shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("inbound: %d sessions still open at shutdown, closing", len(self.sessions))
            for proto in list(self.sessions):
                if proto.transport is not None:
                    proto.transport.abort()
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()

    # -- session bookkeeping -------------------------------------------------------------

    def register(self, proto: RelaySMTP) -> bool:
        """Count a new session; False when over relay.max_sessions (or stopping)."""
        if self.stopping or len(self.sessions) >= self.cfg.relay.max_sessions:
            return False
        self.sessions.add(proto)
        self._idle.clear()
        SESSIONS.inc()
        return True

    def unregister(self, proto: RelaySMTP) -> None:
        if proto in self.sessions:
            self.sessions.discard(proto)
            SESSIONS.dec()
        if not self.sessions:
            self._idle.set()

    def classify_peer(self, ip: str) -> tuple[bool, bool]:
        """(trusted, loopback) for a client address."""
        cached = self._peer_cache.get(ip)
        if cached is not None:
            return cached
        try:
            addr = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False, False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        result = (any(addr in net for net in self.networks), addr.is_loopback)
        if len(self._peer_cache) < 4096:
            self._peer_cache[ip] = result
        return result

    def authenticate(
        self, proto: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator: PLAIN and LOGIN against the users file."""
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        expected = self.users.get(user)
        # Compare even for unknown users so timing does not reveal which exist.
        ok = hmac.compare_digest(expected or b"\0" * 32, data.password) and expected is not None
        if not ok:
            log.warning("%s: AUTH %s failed for %r", _peer_ip(session), mechanism, user)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)

    # -- accepting a message -------------------------------------------------------------

    async def accept(self, proto: RelaySMTP, session: Session, envelope: RelayEnvelope) -> str:
        """After the final dot: build the message, commit it, answer 250 or 451."""
        content = envelope.original_content or b""
        if content and not content.endswith(b"\r\n"):
            content += b"\r\n"
        content = normalise_line_endings(content)
        now = time.time()
        auth_user = str(session.auth_data) if session.authenticated else ""
        header = received_header(
            helo=session.host_name or "",
            client_ip=proto.client_ip,
            hostname=self.cfg.relay.hostname,
            protocol=proto.protocol_name(envelope.smtp_utf8),
            recipient=envelope.recipients[0].address if len(envelope.recipients) == 1 else None,
            when=now,
        )
        helo = session.host_name or ""
        msg = InboundMessage(
            mail_from=envelope.mail_from or "",
            recipients=tuple(envelope.recipients),
            data=header + content,
            ret=envelope.ret,
            envid=envelope.envid,
            smtputf8=envelope.smtp_utf8,
            body=envelope.body,
            client_address=proto.client_ip,
            helo=helo if _HELO_SAFE.match(helo) else _printable(helo)[:255],
            auth_user=auth_user,
            received_at=now,
            auto_submitted=is_auto_submitted(content),
        )
        proto.committing = True
        try:
            # Shielded: a client hanging up must not cancel a commit half-way; if it
            # completes, the client (no 250 seen) retries and we deliver twice, which
            # is the at-least-once side of the trade, never a loss.
            queue_id = await asyncio.shield(self.enqueue(msg))
        except Exception:
            log.exception(
                "enqueue failed (answered 451) for message from <%s> to %d recipients",
                _printable(msg.mail_from),
                len(msg.recipients),
            )
            _REFUSED["storage_failed"].inc()
            return "451 4.3.0 Temporary storage failure, try again"
        finally:
            proto.committing = False
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _not_login_data_warning(record: logging.LogRecord) -> bool:
    # aiosmtpd 1.4 sets its own deprecated Session.login_data on every successful
    # AUTH and warns about it each time; that is noise, not an operator problem.
    return not str(record.msg).startswith("Session.login_data is deprecated")


_QUIET_DEPRECATION = _not_login_data_warning


def _listen_address(listen: str) -> tuple[str, int]:
    """``relay.listen`` as (host, port); port 0 (tests: let the kernel pick) allowed."""
    if listen.endswith(":0"):
        return parse_hostport(listen[:-2] + ":1")[0], 0
    return parse_hostport(listen)


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


__all__ = [
    "InboundServer",
    "ParamError",
    "is_auto_submitted",
    "normalise_line_endings",
    "parse_notify",
    "parse_orcpt",
    "parse_params",
    "received_header",
    "split_path",
    "suppressed_reply",
    "unstuff",
    "xtext_decode",
]
