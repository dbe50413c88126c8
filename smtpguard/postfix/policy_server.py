"""``smtpguard policy``: a Postfix policy service refusing suppressed recipients.

Postfix asks it from ``smtpd_recipient_restrictions`` (``check_policy_service
inet:127.0.0.1:10040``), once per ``RCPT TO``, over connections it keeps open
and reuses (one per smtpd process). Pure asyncio, no C dependency.

Per request: parse the attributes (:mod:`~smtpguard.postfix.policy_protocol`),
ask the recipient policy (one indexed read, synchronous: tens of microseconds,
cheaper than a hop to a thread), answer (:mod:`~smtpguard.postfix.answers`):

* a suppressed recipient: ``action=550 5.1.1 recipient suppressed by smtpguard:
  ...`` (Postfix replies ``550 5.1.1 <rcpt>: Recipient address rejected: ...``);
* anything else, and requests from other protocol states: ``action=DUNNO``
  (the other restrictions decide);
* a request that cannot be checked (malformed, larger than
  ``policy.max_request_size``, a failed lookup): ``policy.on_error``, ``DUNNO``
  or ``DEFER_IF_PERMIT``, and a log line. The connection stays usable.

Bounded: at most ``policy.max_connections`` connections (more are closed at
once: Postfix then applies ``smtpd_policy_service_default_action``), a request
buffer of ``max_request_size``, and ``policy.idle_timeout`` of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from smtpguard.config import Config, parse_hostport
from smtpguard.errors import UserError
from smtpguard.postfix import interim_policy
from smtpguard.postfix.answers import Answer, policy_action, rcpt_answer, trouble_answer
from smtpguard.postfix.interim_policy import RecipientPolicy
from smtpguard.postfix.metrics import POLICY_CONNECTIONS, ServiceMetrics
from smtpguard.postfix.policy_protocol import END, RequestError, encode_reply, parse_request

log = logging.getLogger("smtpguard.policy")


class _Oversized(Exception):
    """The request did not end within ``max_request_size`` (it has been skipped)."""


class PolicyServer:
    """The policy service over one recipient policy; :meth:`start`, then :meth:`close`."""

    def __init__(self, cfg: Config, policy: RecipientPolicy) -> None:
        self.cfg = cfg
        self.settings = cfg.policy
        self.policy = policy
        self.metrics = ServiceMetrics("policy")
        self.trouble = policy_action(trouble_answer(self.settings.on_error))
        self.active = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        """Bind ``policy.listen``; returns the bound (host, port)."""
        host, port = parse_hostport(self.settings.listen)
        self._server = await asyncio.start_server(
            self._session, host, port, limit=self.settings.max_request_size
        )
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        """Stop listening and end every connection (Postfix reconnects to the next one)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ one connection

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self.active >= self.settings.max_connections:
            log.warning("%s: over policy.max_connections, closed", peer)
            self.metrics.errors["busy"].inc()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self.active += 1
        POLICY_CONNECTIONS.inc()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.settings.idle_timeout):
                        action = await self._next(reader, peer)
                except TimeoutError:
                    log.info("%s: idle for %.0fs, closed", peer, self.settings.idle_timeout)
                    break
                if action is None:
                    break
                writer.write(encode_reply(action))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            POLICY_CONNECTIONS.dec()
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next(self, reader: asyncio.StreamReader, peer: object) -> str | None:
        """Read one request and return its action; None when Postfix closed the connection."""
        try:
            block = await _read_request(reader)
        except _Oversized:
            log.warning(
                "%s: request over policy.max_request_size (%d bytes), answered %s",
                peer, self.settings.max_request_size, self.trouble,
            )  # fmt: skip
            self.metrics.errors["oversized"].inc()
            return self.trouble
        if block is None:
            return None
        return self.answer(block, peer)

    def answer(self, block: bytes, peer: object = "") -> str:
        """The action for one request (everything before its empty line)."""
        try:
            attrs = parse_request(block)
        except RequestError as e:
            log.warning("%s: malformed policy request (%s), answered %s", peer, e, self.trouble)
            self.metrics.errors["malformed"].inc()
            return self.trouble
        recipient = attrs.get("recipient", "")
        if attrs.get("protocol_state") != "RCPT" or not recipient:
            return "DUNNO"
        with self.metrics.timed():
            answer = self._check(attrs, recipient)
        self.metrics.answered(answer.verb)
        return policy_action(answer)

    def _check(self, attrs: dict[str, str], recipient: str) -> Answer:
        client = interim_policy.Client(
            ip=attrs.get("client_address", ""),
            helo=attrs.get("helo_name", ""),
            name=attrs.get("client_name", ""),
        )
        try:
            decision = self.policy.check(
                attrs.get("sender", ""), recipient, client, bool(attrs.get("sasl_username"))
            )
            answer = rcpt_answer(decision, self.settings.on_suppressed, self.settings.on_error)
        except Exception:
            log.exception("recipient check failed for %r", recipient[:100])
            answer = trouble_answer(self.settings.on_error)
        if answer.trouble:
            self.metrics.errors["lookup"].inc()
        return answer


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The next request without its terminating empty line; None at end of stream.

    Raises :class:`_Oversized` after skipping a request longer than the reader's
    limit up to its end, so the connection stays in step with Postfix.
    """
    try:
        data = await reader.readuntil(END)
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            log.info("connection closed inside a request (%d bytes dropped)", len(e.partial))
        return None
    except asyncio.LimitOverrunError as e:
        await reader.readexactly(e.consumed)
        while True:
            try:
                await reader.readuntil(END)
                raise _Oversized from None
            except asyncio.LimitOverrunError as more:
                await reader.readexactly(more.consumed)
    return data[: -len(END)]


async def serve(cfg: Config, *, on_listening: Callable[[str, int], None] | None = None) -> int:
    """Run the policy service until SIGTERM or SIGINT; returns the exit code (0)."""
    policy = interim_policy.open_recipient_policy(cfg)
    server = PolicyServer(cfg, policy)
    try:
        host, port = await server.start()
    except OSError as e:
        policy.close()
        raise UserError(f"policy.listen {cfg.policy.listen}: {e.strerror or e}") from None
    if cfg.policy.metrics_listen:
        from smtpguard.relay.metrics import serve as serve_metrics

        serve_metrics(cfg.policy.metrics_listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("policy service listening on %s:%d", host, port)
    if on_listening is not None:
        on_listening(host, port)
    try:
        await stop.wait()
    finally:
        await server.close()
        policy.close()
    return 0
