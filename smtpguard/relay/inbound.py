"""The relay's inbound SMTP server: what Postfix (``relayhost``) talks to.

Built on aiosmtpd's :class:`~aiosmtpd.smtp.SMTP` protocol
(:class:`~smtpguard.relay.session.RelaySMTP`, one per connection), served by
``loop.create_server`` on the running loop (no Controller thread: the queue
and the delivery engine share this loop). aiosmtpd does the command reading,
STARTTLS and SASL exchanges; the session adds what a relay in front of the
Internet needs and aiosmtpd leaves to the application, and replaces two of
its hot paths (the relay's CPU per message is what limits it behind Postfix):

* **Message data** is read with one ``readuntil(CRLF.CRLF)`` per message (or
  per 256 KiB chunk of a big one) instead of one read per line, then
  dot-unstuffed (RFC 5321 section 4.5.2) in one pass: ``RelaySMTP._read_data``.
* **Replies** produced in the same loop tick leave in one segment: with
  PIPELINING (RFC 2920) the replies to MAIL, RCPT and DATA cost one send()
  instead of three (``RelaySMTP.push``).

This module is the server: listening, session bookkeeping, AUTH, and turning
an accepted transaction into a queued message.

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
  Line lengths count the octets before CRLF.
* **Bounded time per client** (Postfix's defaults, ``postconf -d`` of Postfix
  3.7): ``relay.idle_timeout`` (300 s, ``smtpd_timeout``) for each command and
  while idle, garbage and half lines not counting as activity; in DATA each
  octet received buys ``1/relay.min_data_rate`` seconds (500 bytes/s,
  ``smtpd_min_data_rate`` with ``smtpd_per_request_deadline``), never more than
  ``idle_timeout`` ahead, so a byte every few seconds does not keep a message
  open; ``relay.session_deadline`` (600 s; Postfix's client stops reusing a
  connection after ``smtp_connection_reuse_time_limit`` = 300 s) ends any
  session between commands, a message in DATA finishing first; at most
  ``relay.junk_command_limit`` NOOP/RSET/VRFY/HELP between two messages (100,
  ``smtpd_junk_command_limit``). Timeouts are ``421 4.4.2``.
* **Bounded sessions**: ``relay.max_sessions`` in all, and
  ``relay.max_sessions_per_client`` from one address (50,
  ``smtpd_client_connection_count_limit``; trusted networks exempt, as
  Postfix exempts ``$mynetworks``): ``421 4.7.0`` beyond. With
  ``relay.stress_threshold`` of the sessions open the server is under stress
  (Postfix's STRESS_README): idle timeout ``relay.stress_idle_timeout`` (10 s)
  at once for every session, junk command limit 1, and a new connection at
  ``max_sessions`` takes the place of the session idle longest that has no
  transaction (untrusted clients first; an untrusted newcomer never displaces
  a trusted client), which gets ``421 4.7.0``. So hundreds of idle sockets
  cannot keep a real client out.
* **Bounded memory**: message data is unstuffed and normalised chunk by chunk
  into one buffer (not five copies), and all sessions together hold at most
  ``relay.max_data_in_flight`` octets of it: a message that would exceed it
  gets ``451 4.3.2`` (at MAIL when its SIZE= says so, at DATA, or after its
  data, which is then only counted), unless it is the only one.
* **The bounce domain is not relayed.** Mail for ``intake.bounce_domain`` arriving
  here is routed wrongly (Postfix's ``transport_maps`` must send it to
  ``intake.listen``): relaying it would send a bounce back out towards its own
  return path. Each such recipient gets ``451 4.3.5`` (a configuration problem, RFC
  3463) saying where the domain belongs: the client keeps the message queued, so a
  misrouted DSN is neither lost nor looped, and arrives once the route is fixed.
* **Suppression at RCPT**: every recipient goes through the
  :class:`~smtpguard.policy.recipient.RecipientPolicy`; a suppressed one is
  refused with ``relay.suppressed_reply`` and a text saying why and since when,
  so Postfix bounces to the sender itself; a failing lookup answers ``451 4.3.0``.
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
import hmac
import ipaddress
import logging
import math
import ssl
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from smtpguard.address import normalize_domain
from smtpguard.config import Config, parse_hostport
from smtpguard.errors import ConfigError
from smtpguard.policy.recipient import RecipientPolicy
from smtpguard.relay.metrics import INBOUND_SESSIONS, REFUSED
from smtpguard.relay.seams import Enqueue
from smtpguard.relay.session import RelayEnvelope, RelaySMTP
from smtpguard.smtp.headers import HELO_SAFE, is_auto_submitted, received_header
from smtpguard.smtp.text import printable
from smtpguard.store.messages import InboundMessage

log = logging.getLogger("smtpguard.inbound")


class InboundServer:
    """The relay's listening SMTP server (see the module docstring for behaviour)."""

    def __init__(self, cfg: Config, *, enqueue: Enqueue, policy: RecipientPolicy) -> None:
        self.cfg = cfg
        self.settings = cfg.relay
        self.enqueue = enqueue
        self.policy = policy
        relay = cfg.relay
        self.host, self._port = _listen_address(relay.listen)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in relay.trusted_networks]
        self.users = load_users(relay.auth_users_file) if relay.auth_users_file else {}
        self.tls_context = _tls_context(relay.tls_cert, relay.tls_key)
        self.sessions: set[RelaySMTP] = set()
        self.per_client: dict[str, int] = {}
        self.in_flight = 0  # message data octets reserved by sessions
        # Sessions from which on the server is under stress (Postfix STRESS_README).
        self.stress_at = max(1, math.ceil(relay.stress_threshold * relay.max_sessions))
        self._stress_logged = -math.inf
        # What sessions read on every command; changed when stress begins or ends.
        self.stressed = False
        self.idle_timeout = relay.idle_timeout
        self.junk_limit = relay.junk_command_limit
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._peer_cache: dict[str, tuple[bool, bool]] = {}
        #: Recipients at this domain are refused (see the module doc); "" for none.
        self.foreign_domain = (
            normalize_domain(cfg.intake.bounce_domain) if cfg.intake.bounce_domain else ""
        )

    def foreign_reply(self, recipient: str) -> str:
        """What a recipient at :attr:`foreign_domain` is told."""
        where = (
            f"is received on intake.listen ({self.cfg.intake.listen})"
            if self.cfg.intake.listen
            else "is not relayed (intake.listen is not set)"
        )
        return (
            f"451 4.3.5 <{recipient}>: the bounce domain {self.foreign_domain} {where},"
            " not on the relay port: route it there (transport_maps)"
        )

    @property
    def auth_offered(self) -> bool:
        return bool(self.users)

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

    def _update_stress(self) -> None:
        """Under stress with ``relay.stress_threshold`` of ``max_sessions`` open: shorter
        idle timeout (for every session at once) and junk command limit."""
        stressed = len(self.sessions) >= self.stress_at
        if stressed == self.stressed:
            return
        relay = self.settings
        self.stressed = stressed
        if not stressed:
            self.idle_timeout = relay.idle_timeout
            self.junk_limit = relay.junk_command_limit
            return
        self.idle_timeout = min(relay.idle_timeout, relay.stress_idle_timeout)
        self.junk_limit = 1
        now = time.monotonic()
        if now >= self._stress_logged + 60:  # not once per connection of a flood
            self._stress_logged = now
            log.warning(
                "inbound: %d sessions open: under stress, idle timeout %gs",
                len(self.sessions), self.idle_timeout,
            )  # fmt: skip
        for session in self.sessions:
            session.shorten_timeout()

    def register(self, proto: RelaySMTP) -> str | None:
        """Count a new session, or the 421 reply that refuses it (see the module doc)."""
        relay = self.settings
        host = relay.hostname
        if self.stopping:
            return f"421 4.3.2 {host} Service shutting down"
        ip = proto.client_ip
        if not proto.trusted and self.per_client.get(ip, 0) >= relay.max_sessions_per_client:
            REFUSED["too_many_from_client"].inc()
            log.info("%s: over %d sessions from this address, refused", ip,
                     relay.max_sessions_per_client)  # fmt: skip
            return f"421 4.7.0 {host} Error: too many connections from {ip}"
        if len(self.sessions) >= relay.max_sessions:
            idle = self._longest_idle(proto.trusted)
            if idle is None:
                REFUSED["too_many_sessions"].inc()
                return f"421 4.7.0 {host} Error: too many connections"
            idle.close_idle()
            self.unregister(idle)
        self.sessions.add(proto)
        self.per_client[ip] = self.per_client.get(ip, 0) + 1
        self._idle.clear()
        INBOUND_SESSIONS.inc()
        self._update_stress()
        return None

    def _longest_idle(self, trusted: bool) -> RelaySMTP | None:
        """The session to close for a new one: no transaction, untrusted before
        trusted (an untrusted newcomer never displaces a trusted client), idle
        longest; None when no session qualifies."""
        best: RelaySMTP | None = None
        best_key: tuple[bool, float] | None = None
        for s in self.sessions:
            if s.in_transaction or s.in_data or s.committing or (s.trusted and not trusted):
                continue
            key = (s.trusted, s.last_activity)
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best

    def unregister(self, proto: RelaySMTP) -> None:
        if proto in self.sessions:
            self.sessions.discard(proto)
            INBOUND_SESSIONS.dec()
            n = self.per_client.get(proto.client_ip, 0) - 1
            if n > 0:
                self.per_client[proto.client_ip] = n
            else:
                self.per_client.pop(proto.client_ip, None)
            self._update_stress()
        if not self.sessions:
            self._idle.set()

    def reserve(self, proto: RelaySMTP, octets: int) -> bool:
        """Count message data against ``relay.max_data_in_flight``; a session holding
        all of what is counted may always go on (one message never starves)."""
        if self.in_flight + octets > self.settings.max_data_in_flight and (
            self.in_flight > proto.reserved
        ):
            return False
        self.in_flight += octets
        return True

    def unreserve(self, octets: int) -> None:
        self.in_flight -= octets

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
        # Unstuffed and normalised to CRLF by the session as it arrived (one buffer).
        content = envelope.original_content or bytearray()
        if content and not content.endswith(b"\r\n"):
            content += b"\r\n"
        auto_submitted = is_auto_submitted(content)
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
        if isinstance(content, bytearray):
            content[:0] = header  # in place: a 30 MB message is not copied again
        else:
            content = header + content
        msg = InboundMessage(
            mail_from=envelope.mail_from or "",
            recipients=tuple(envelope.recipients),
            data=content,
            ret=envelope.ret,
            envid=envelope.envid,
            smtputf8=envelope.smtp_utf8,
            body=envelope.body,
            client_address=proto.client_ip,
            helo=helo if HELO_SAFE.match(helo) else printable(helo)[:255],
            auth_user=auth_user,
            received_at=now,
            auto_submitted=auto_submitted,
            arrived_at=envelope.started or now,
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
                printable(msg.mail_from),
                len(msg.recipients),
            )
            REFUSED["storage_failed"].inc()
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
