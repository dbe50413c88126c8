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
  ``policy_service.max_request_size``, a failed lookup): ``policy_service.on_error``, ``DUNNO``
  or ``DEFER_IF_PERMIT``, and a log line. The connection stays usable.

Bounded: at most ``policy_service.max_connections`` connections (more are closed at
once: Postfix then applies ``smtpd_policy_service_default_action``), a request
buffer of ``max_request_size``, and ``policy_service.idle_timeout`` of silence.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import cast

from smtpguard.config import Config, parse_hostport
from smtpguard.errors import UserError
from smtpguard.policy import open_recipient_policy
from smtpguard.policy.recipient import Client, RecipientPolicy
from smtpguard.postfix.answers import Answer, policy_action, rcpt_answer, trouble_answer
from smtpguard.postfix.metrics import POLICY_CONNECTIONS, ServiceMetrics
from smtpguard.postfix.policy_protocol import END, RequestError, encode_reply, parse_request
from smtpguard.store import fleet

log = logging.getLogger("smtpguard.policy")


class PolicyServer:
    """The policy service over one recipient policy; :meth:`start`, then :meth:`close`."""

    def __init__(self, cfg: Config, policy: RecipientPolicy) -> None:
        self.settings = cfg.policy_service
        self.policy = policy
        self.metrics = ServiceMetrics("policy")
        self.trouble = policy_action(trouble_answer(self.settings.on_error))
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        """Bind ``policy_service.listen``; returns the bound (host, port)."""
        host, port = parse_hostport(self.settings.listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        """Stop listening and end every connection (Postfix reconnects to the next one)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

    def oversized(self, peer: object) -> bytes:
        log.warning(
            "%s: request over policy_service.max_request_size (%d bytes), answered %s",
            peer, self.settings.max_request_size, self.trouble,
        )  # fmt: skip
        self.metrics.errors["oversized"].inc()
        return encode_reply(self.trouble)

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
        self.metrics.requests.inc()
        started = time.perf_counter()
        answer = self._check(attrs, recipient)
        self.metrics.latency.observe(time.perf_counter() - started)
        self.metrics.answered(answer)
        return policy_action(answer)

    def _check(self, attrs: dict[str, str], recipient: str) -> Answer:
        client = Client(
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


class _Connection(asyncio.Protocol):
    """One Postfix connection: requests answered as they complete, in order.

    A protocol rather than a stream reader: a request is answered inside the
    read callback that completed it (one pass of the event loop per request, no
    task switch), which is most of the service's CPU per request.
    """

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.limit = server.settings.max_request_size
        self.idle = server.settings.idle_timeout
        self.buffer = bytearray()
        self.skipping = False  # inside a request longer than the limit
        self.transport: asyncio.Transport
        self.peer: object = ""
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        if len(self.server.connections) >= self.server.settings.max_connections:
            log.warning("%s: over policy_service.max_connections, closed", self.peer)
            self.server.metrics.errors["busy"].inc()
            transport.close()
            return
        self.server.connections.add(self)
        POLICY_CONNECTIONS.inc()
        self._timer = self._loop.call_at(self._last + self.idle, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        buffer = self.buffer
        buffer += data
        replies = []
        while (end := buffer.find(END)) >= 0:
            if self.skipping or end > self.limit:
                self.skipping = False
                replies.append(self.server.oversized(self.peer))
            else:
                replies.append(encode_reply(self.server.answer(bytes(buffer[:end]), self.peer)))
            del buffer[: end + len(END)]
        if len(buffer) > self.limit:
            # Inside an oversized request: drop it, keeping one byte in case the
            # empty line that ends it is split across reads.
            self.skipping = True
            del buffer[:-1]
        if replies:
            self.transport.write(b"".join(replies))

    def pause_writing(self) -> None:
        # Postfix is not reading its answers: stop reading its requests meanwhile.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def _idle_check(self) -> None:
        deadline = self._last + self.idle
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._idle_check)
            return
        log.info("%s: idle for %.0fs, closed", self.peer, self.idle)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self not in self.server.connections:
            return
        self.server.connections.discard(self)
        POLICY_CONNECTIONS.dec()
        if self._timer is not None:
            self._timer.cancel()
        if self.buffer.strip():
            log.info("%s: closed inside a request (%d bytes dropped)", self.peer, len(self.buffer))


async def serve(cfg: Config, *, on_listening: Callable[[str, int], None] | None = None) -> int:
    """Run the policy service until SIGTERM or SIGINT; returns the exit code (0)."""
    policy = open_recipient_policy(cfg)
    server = PolicyServer(cfg, policy)
    node = fleet.prepare(cfg)  # a fleet node keeps its cache in sync (store.backend)
    replicator = await fleet.start_replicator(cfg, node) if node is not None else None
    try:
        host, port = await server.start()
    except OSError as e:
        if replicator is not None:
            await replicator.stop()
        policy.close()
        listen = cfg.policy_service.listen
        raise UserError(f"policy_service.listen {listen}: {e.strerror or e}") from None
    if cfg.policy_service.metrics_listen:
        from smtpguard.metrics import serve as serve_metrics

        serve_metrics(cfg.policy_service.metrics_listen)
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
        if replicator is not None:
            await replicator.stop()
        policy.close()
    return 0
