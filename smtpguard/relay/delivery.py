"""The delivery client: claimed recipients -> SMTP transactions at the next hop.

A :class:`~smtpguard.store.queue.Claim` (one message, its due recipients) is
split into :class:`Job`\\ s, one per *destination*: the recipient domain for MX
and route delivery, ``"smarthost"`` when everything goes to the smarthost (one
transaction carries all recipients), ``"dsn"`` for the DSNs we generate (sent
to ``dsn.next_hop``). Jobs wait in a per-destination line; connection tasks
take them in order, several messages per connection
(``delivery.messages_per_connection``), and an idle connection lingers briefly
for the next message to the same place, as Postfix's connection cache does.
How many connections a destination gets is the :class:`Shaper`'s decision;
``delivery.concurrency`` caps the total.

Client side of RFC 5321 with aiosmtplib: EHLO (HELO fallback), opportunistic
STARTTLS (RFC 3207; certificates not verified, as for opportunistic TLS in
Postfix), AUTH for the smarthost, DSN parameters passed on when the next hop
offers DSN (RFC 3461: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT, xtext
encoded), SIZE, BODY=8BITMIME and SMTPUTF8 (RFC 6152, RFC 6531). Timeouts from
the config (RFC 5321 section 4.5.3.2: per command, and a longer one for the
final dot).

Every non-success reply, at every stage (greeting, EHLO, MAIL, RCPT, DATA),
goes through the classifier; connection failures (refused, timeout, TLS
failure) are soft ``networkerror``; routing failures carry their own verdict.
The resulting :class:`~smtpguard.relay.outcome.Attempt` list goes to the
:class:`~smtpguard.relay.outcome.OutcomeHandler` while the connection moves on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiosmtplib

from smtpguard.classify.verdict import ADDRESS_REASONS, Verdict
from smtpguard.config import Config, parse_hostport
from smtpguard.relay import metrics
from smtpguard.relay.outcome import Attempt, OutcomeHandler
from smtpguard.relay.scheduler import Shaper
from smtpguard.store.queue import Claim, QueuedMessage, QueuedRecipient, QueueStore

log = logging.getLogger("smtpguard.delivery")

#: How long an idle connection waits for another message to the same destination.
IDLE_LINGER = 0.5
#: Pauses between tries to record an attempt's results when the database refuses.
RECORD_RETRIES: tuple[float | None, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, None)


class ReplyClassifier(Protocol):
    def reply(
        self, code: int | str, text: str, *, stage: str = ..., recipient: str = ...,
        remote_host: str = ...,
    ) -> Verdict: ...  # fmt: skip


@dataclass
class _Tracker:
    """Counts a claim's unfinished jobs; the scheduler slot is freed at zero."""

    remaining: int
    on_done: Callable[[], None] | None


@dataclass
class Job:
    """One message's recipients for one destination."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]
    destination: str
    domain: str
    tracker: _Tracker = field(repr=False)


class _ConnectionLost(Exception):
    """The session died mid-transaction; the current job's recipients are deferred."""


def xtext(value: str) -> str:
    """RFC 3461 section 4 xtext: '+', '=', controls, space and non-ASCII as +HH."""
    out = []
    for byte in value.encode("utf-8"):
        if byte in (0x2B, 0x3D) or not 33 <= byte <= 126:
            out.append(f"+{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def _orcpt_param(orcpt: str) -> str:
    kind, sep, addr = orcpt.partition(";")
    if not sep:
        kind, addr = "rfc822", orcpt
    return f"ORCPT={kind.strip()};{xtext(addr.strip())}"


# A bare LF, or a CR not followed by LF (the CR of a CRLF pair is left alone).
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


def wire_data(body: bytes) -> bytes:
    """The DATA payload for a message: CRLF lines, dot-stuffed, ending in ``.CRLF``.

    RFC 5321 section 2.3.8 (only CRLF ends a line) and section 4.5.2
    (transparency: a line starting with "." gets another). Queued bodies are
    CRLF-only already (the inbound side normalises), so the cheap counts
    usually skip the regex that aiosmtplib would run over every body, and the
    stuffing is one ``bytes.replace``.
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\r") != crlf or body.count(b"\n") != crlf:
        body = _LINE_ENDINGS.sub(b"\r\n", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body[:1] == b".":
        body = b"." + body
    if b"\r\n." in body:
        body = body.replace(b"\r\n.", b"\r\n..")
    return body + b".\r\n"


async def send_data(smtp: aiosmtplib.SMTP, body: bytes, *, timeout: float) -> Any:
    """``DATA``, then the body as :func:`wire_data` makes it; the final reply.

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


def _ascii(text: str) -> bool:
    return text.isascii()


def soft_verdict(
    recipient: str, text: str, *, reason: str = "networkerror", status: str = "4.4.1",
    remote_host: str = "", stage: str = "connect",
) -> Verdict:  # fmt: skip
    """A failure without an SMTP reply (refused, timeout, TLS): always soft."""
    return Verdict(
        recipient=recipient, status=status, reason=reason, bounce="soft", suppress=False,
        diagnostic=text, remote_host=remote_host, stage=stage,  # type: ignore[arg-type]
        format="relay",
    )  # fmt: skip


def routing_verdict(recipient: str, err: Any) -> Verdict:
    """A :class:`RoutingError` as a verdict; permanent ones suppress like Sisimai's rule."""
    hard = bool(err.permanent)
    return Verdict(
        recipient=recipient, status=err.status, reply_code=err.reply_code, reason=err.reason,
        bounce="hard" if hard else "soft",
        suppress=hard and (err.reason in ADDRESS_REASONS or err.reason == "notaccept"),
        diagnostic=err.text, stage="connect", format="relay",
    )  # fmt: skip


class Delivery:
    """Destination lines and the connection tasks that empty them."""

    def __init__(
        self,
        cfg: Config,
        store: QueueStore,
        router: Any,
        classifier: ReplyClassifier,
        outcome: OutcomeHandler,
        *,
        shaper: Shaper | None = None,
    ) -> None:
        self._cfg = cfg
        self._d = cfg.delivery
        self._store = store
        self._router = router
        self._classifier = classifier
        self._outcome = outcome
        self._shaper = shaper or Shaper()
        self._helo = self._d.helo_name or cfg.relay.hostname
        self._pending: dict[str, collections.deque[Job]] = collections.defaultdict(
            collections.deque
        )
        self._arrivals: dict[str, asyncio.Event] = {}
        self._active: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, None] = {}  # destinations waiting for a connection slot
        self._connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs_in_progress: dict[int, Job] = {}
        self._stopping = False

    # -- intake ---------------------------------------------------------------

    def _destination(self, msg: QueuedMessage, rcpt: QueuedRecipient) -> str:
        if msg.kind == "dsn":
            return "dsn"
        if self._d.smarthost:
            return "smarthost"
        return rcpt.domain

    def submit(self, claim: Claim, on_done: Callable[[], None] | None = None) -> None:
        """Line up a claimed message's recipients by destination."""
        groups: dict[str, list[QueuedRecipient]] = {}
        for r in claim.recipients:
            groups.setdefault(self._destination(claim.message, r), []).append(r)
        tracker = _Tracker(len(groups), on_done)
        for dest, rcpts in groups.items():
            job = Job(claim.message, tuple(rcpts), dest, rcpts[0].domain, tracker)
            self._pending[dest].append(job)
            ev = self._arrivals.get(dest)
            if ev is not None:
                ev.set()
            self._maybe_connect(dest)

    def _maybe_connect(self, dest: str) -> None:
        pending = len(self._pending.get(dest, ()))
        if not pending or self._stopping:
            return
        active = self._active[dest]
        if active >= self._shaper.max_connections(dest):
            return
        if active and pending <= active * 2:
            return  # the open connections will take them
        if self._connections >= self._d.concurrency:
            self._waiting[dest] = None
            return
        self._waiting.pop(dest, None)
        self._active[dest] += 1
        self._connections += 1
        task = asyncio.create_task(self._connection(dest), name=f"deliver:{dest}")
        self._tasks.add(task)
        task.add_done_callback(self._connection_done(dest))

    def _connection_done(self, dest: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            self._active[dest] -= 1
            if self._active[dest] <= 0:
                del self._active[dest]
            self._connections -= 1
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery to %s crashed: %r", dest, task.exception())
            if self._stopping:
                return
            # Destinations that waited for a slot go first, then this one again.
            for waiting in list(self._waiting):
                if self._connections >= self._d.concurrency:
                    break
                self._waiting.pop(waiting, None)
                self._maybe_connect(waiting)
            self._maybe_connect(dest)
            if dest not in self._active and not self._pending.get(dest):
                # Forget idle destinations: a relay sees many domains over its life.
                self._pending.pop(dest, None)
                self._arrivals.pop(dest, None)

        return done

    @property
    def busy(self) -> int:
        return len(self._tasks)

    # -- finishing a job ------------------------------------------------------

    def _finish(self, job: Job, attempts: list[Attempt]) -> None:
        """Hand the attempts to the outcome handler without stalling the connection."""
        task = asyncio.create_task(self._apply(job, attempts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, job: Job, attempts: list[Attempt]) -> None:
        try:
            # The write is all-or-nothing, so trying again is safe; a database held
            # locked for a while (a long CLI action) must not strand the recipients.
            for wait in RECORD_RETRIES:
                try:
                    await self._outcome.apply(job.message, attempts)
                    break
                except Exception as e:
                    if wait is None:
                        # Left 'active': the next start's recovery queues them again.
                        log.error("recording the attempt for %s failed: %s", job.message.qid, e)
                    else:
                        log.warning("recording the attempt for %s failed (%s); retrying",
                                    job.message.qid, e)  # fmt: skip
                        await asyncio.sleep(wait)
        finally:
            job.tracker.remaining -= 1
            if job.tracker.remaining == 0 and job.tracker.on_done is not None:
                job.tracker.on_done()

    def _fail(self, job: Job, make: Callable[[QueuedRecipient], Verdict], host: str = "") -> None:
        self._finish(job, [Attempt(r, make(r), remote_host=host) for r in job.recipients])

    def _fail_pending(
        self, dest: str, make: Callable[[QueuedRecipient], Verdict], host: str = ""
    ) -> None:
        line = self._pending.get(dest)
        while line:
            self._fail(line.popleft(), make, host)

    # -- a connection ---------------------------------------------------------

    async def _hops(self, dest: str, domain: str) -> list[Any]:
        from smtpguard.relay.routing import NextHop

        if dest == "dsn":
            host, port = parse_hostport(self._cfg.dsn.next_hop)
            return [NextHop(host=host, address=host, port=port, preference=0, source="route",
                            tls="opportunistic")]  # fmt: skip
        return list(await self._router.route(domain))

    async def _connection(self, dest: str) -> None:
        from smtpguard.relay.routing import RoutingError

        line = self._pending[dest]
        if not line:
            return
        domain = line[0].domain
        try:
            hops = await self._hops(dest, domain)
        except RoutingError as e:
            log.info("routing %s failed: %s", domain, e.text)
            self._fail_pending(dest, lambda r, err=e: routing_verdict(r.address, err))
            return
        except Exception as e:
            log.error("routing %s failed unexpectedly: %r", domain, e)
            why = f"routing failed: {e}"
            self._fail_pending(dest, lambda r: soft_verdict(r.address, why))
            return
        smtp, hop, failure = await self._open(hops)
        if smtp is None:
            make, host = failure
            self._fail_pending(dest, make, host)
            return
        metrics.CONNECTIONS.labels("ok").inc()
        try:
            await self._session(smtp, hop, dest)
        finally:
            with contextlib.suppress(Exception):
                if smtp.is_connected:
                    await smtp.quit(timeout=min(self._d.command_timeout, 10.0))
            smtp.close()

    async def _open(self, hops: list[Any]) -> tuple[Any, Any, Any]:
        """Connect to the first hop that takes us; else what to tell every recipient."""
        d = self._d
        failure: Any = (lambda r: soft_verdict(r.address, "no next hop"), "")
        for hop in hops:
            smtp = aiosmtplib.SMTP(
                hostname=hop.address, port=hop.port, local_hostname=self._helo,
                timeout=d.command_timeout, start_tls=False, use_tls=False,
            )  # fmt: skip
            label = f"{hop.host}[{hop.address}]:{hop.port}"
            try:
                await smtp.connect(timeout=d.connect_timeout)
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
                if hop.tls != "none" and smtp.supports_extension("starttls"):
                    await smtp.starttls(server_hostname=hop.host, validate_certs=False,
                                        timeout=d.command_timeout)  # fmt: skip
                    await smtp.ehlo()
                elif hop.tls == "required":
                    smtp.close()
                    text = f"{label} does not offer STARTTLS and TLS is required"
                    failure = (lambda r, t=text, h=label: soft_verdict(
                        r.address, t, reason="failedstarttls", status="4.7.10", remote_host=h),
                        label)  # fmt: skip
                    continue
                if hop.username:
                    await smtp.login(hop.username, hop.password)
                return smtp, hop, None
            except aiosmtplib.SMTPResponseException as e:
                # The greeting, EHLO or AUTH refused us: the classifier decides.
                smtp.close()
                code, text = e.code, e.message
                failure = (
                    lambda r, c=code, t=text, h=label: self._classify(
                        c, t, "connect", r.address, h
                    ),
                    label,
                )
                metrics.CONNECTIONS.labels("refused").inc()
                log.info("%s refused the session: %s %s", label, code, text)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                smtp.close()
                text = f"connect to {label}: {type(e).__name__}: {e}"
                failure = (lambda r, t=text, h=label: soft_verdict(r.address, t, remote_host=h),
                           label)  # fmt: skip
                metrics.CONNECTIONS.labels("failed").inc()
                log.info("%s", text)
        return None, None, failure

    async def _session(self, smtp: aiosmtplib.SMTP, hop: Any, dest: str) -> None:
        """Send jobs for ``dest`` over one connection until the line is empty or the cap is hit."""
        line = self._pending[dest]
        label = f"{hop.host}[{hop.address}]:{hop.port}"
        sent = 0
        while sent < self._d.messages_per_connection and smtp.is_connected:
            if not line:
                if self._stopping or self._waiting:
                    return
                ev = self._arrivals.setdefault(dest, asyncio.Event())
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), IDLE_LINGER)
                except TimeoutError:
                    return
                continue
            if self._stopping:
                return
            job = line.popleft()
            await self._shaper.admit(dest)
            self._jobs_in_progress[id(job)] = job
            try:
                attempts = await self._send(smtp, label, job)
            except _ConnectionLost as e:
                self._fail(job, lambda r, t=str(e): soft_verdict(r.address, t, remote_host=label,
                                                                  stage="data"), label)  # fmt: skip
                return
            finally:
                self._jobs_in_progress.pop(id(job), None)
            self._finish(job, attempts)
            sent += 1

    async def _send(self, smtp: aiosmtplib.SMTP, label: str, job: Job) -> list[Attempt]:
        msg = job.message
        body_task = asyncio.ensure_future(self._store.body(msg.id))
        try:
            return await self._transaction(smtp, label, job, body_task)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as e:
            raise _ConnectionLost(f"{label}: {type(e).__name__}: {e}") from None
        finally:
            if not body_task.done():
                body_task.cancel()
            with contextlib.suppress(BaseException):
                await body_task

    def _verdicts(
        self, rcpts: tuple[QueuedRecipient, ...] | list[QueuedRecipient], code: int, text: str,
        stage: str, label: str,
    ) -> list[Attempt]:  # fmt: skip
        return [
            Attempt(r, self._classify(code, text, stage, r.address, label), str(code), text, label)
            for r in rcpts
        ]

    def _classify(self, code: int, text: str, stage: str, recipient: str, label: str) -> Verdict:
        """The classifier's verdict on a reply; a classifier bug must not lose the message."""
        try:
            return self._classifier.reply(
                code, text, stage=stage, recipient=recipient, remote_host=label
            )
        except Exception as e:
            log.error("classifier failed on %r: %r", f"{code} {text}", e)
            temporary = str(code).startswith("4")
            return Verdict(
                recipient=recipient, reply_code=str(code), reason="undefined",
                bounce="soft" if temporary else "hard", diagnostic=text, remote_host=label,
                format="relay",
            )  # fmt: skip

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.rset()

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, label: str, job: Job, body_task: asyncio.Future[bytes]
    ) -> list[Attempt]:
        msg = job.message
        d = self._d
        dsn = smtp.supports_extension("dsn")
        needs_utf8 = not _ascii(msg.mail_from) or any(not _ascii(r.address) for r in job.recipients)
        utf8 = msg.smtputf8 and smtp.supports_extension("smtputf8")
        if needs_utf8 and not utf8:
            # RFC 6531 section 3.4: without SMTPUTF8 at the next hop this cannot be sent.
            text = "5.6.7 the next hop does not support SMTPUTF8"
            return self._verdicts(job.recipients, 553, text, "mail", label)
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
                opts.append(f"ENVID={xtext(msg.envid)}")
        resp = await smtp.execute_command(
            b"MAIL", f"FROM:<{msg.mail_from}>".encode(enc), *(o.encode() for o in opts)
        )
        if resp.code != 250:
            await self._reset(smtp)
            return self._verdicts(job.recipients, resp.code, resp.message, "mail", label)
        attempts: list[Attempt] = []
        accepted: list[QueuedRecipient] = []
        for r in job.recipients:
            ropts: list[bytes] = []
            if dsn:
                if r.notify:
                    ropts.append(f"NOTIFY={','.join(r.notify)}".encode())
                if r.orcpt:
                    ropts.append(_orcpt_param(r.orcpt).encode())
            resp = await smtp.execute_command(b"RCPT", f"TO:<{r.address}>".encode(enc), *ropts)
            if resp.code in (250, 251):
                accepted.append(r)
            else:
                attempts += self._verdicts([r], resp.code, resp.message, "rcpt", label)
                if resp.code == 421:
                    raise aiosmtplib.SMTPServerDisconnected(f"421 {resp.message}")
        if not accepted:
            await self._reset(smtp)
            return attempts
        try:
            body = await body_task
        except Exception as e:
            await self._reset(smtp)
            return attempts + [
                Attempt(r, soft_verdict(r.address, f"message body unreadable: {e}",
                                        reason="systemerror", status="4.3.0"))
                for r in accepted
            ]  # fmt: skip
        try:
            resp = await send_data(smtp, body, timeout=d.data_timeout)
        except aiosmtplib.SMTPDataError as e:
            await self._reset(smtp)
            return attempts + self._verdicts(accepted, e.code, e.message, "data", label)
        text = resp.message.replace("\n", " ")
        return attempts + [Attempt(r, None, str(resp.code), text, label) for r in accepted]

    # -- shutdown -------------------------------------------------------------

    async def drain(self, timeout: float) -> int:
        """Stop taking jobs, finish messages being sent (up to ``timeout``), release the rest.

        Returns how many recipients were handed back to ``queued`` unfinished.
        """
        self._stopping = True
        released: list[int] = []
        for line in self._pending.values():
            while line:
                job = line.popleft()
                released += [r.id for r in job.recipients]
        for ev in self._arrivals.values():
            ev.set()
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(deadline - time.monotonic(), 0.01))
        if self._tasks:
            for job in self._jobs_in_progress.values():
                released += [r.id for r in job.recipients]
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if released:
            try:
                await self._store.release(released)
            except Exception as e:  # the next start's recovery puts them back
                log.error("releasing %d claimed recipients failed: %s", len(released), e)
        return len(released)
