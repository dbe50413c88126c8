"""The intake listener: final delivery for the bounce domain, where returned mail arrives.

Postfix routes the bounce domain to it (``transport_maps``, see ``conf/postfix/``);
``smtpguard serve`` runs it on ``intake.listen`` beside the relay. It is the relay's
own SMTP session (same parser, limits, no smuggling, line endings), with three
differences:

* **any client may write to the bounce domain**, and only to it: this is final
  delivery, not relaying (``554 5.7.1`` for any other domain), with no AUTH;
* **nothing is queued or relayed**: after the final dot the message is judged
  (:func:`smtpguard.intake.returned.judge`: signed return path -> ``dsn-verified``,
  anything else ``dsn-unverified``, ARF -> ``arf`` or ``arf-unverified``, auto-replies
  change nothing), checked against what was sent (:mod:`smtpguard.store.sent`: the
  relay's queue and the milter's messages; a token for a message that never went to
  that recipient is ``unknown-message``, a redacted complaint's recipient is recovered),
  and handed to the policy's sink; ``250`` only once the sink committed, ``451 4.3.0``
  when it could not (the sender retries);
* **its own limits**: ``intake.max_message_size`` (a DSN is small; one returning a
  whole message is cut to what the classifier reads), ``intake.max_sessions``, and
  ``intake.rate_limit`` messages per client address per minute (``450 4.7.1`` beyond).
  Judging (classification and the look-ups of what was sent) runs in one worker
  thread, so hostile mail costs bounded time and never stalls the relay's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from smtpguard.errors import UserError
from smtpguard.intake.returned import judge
from smtpguard.policy.recipient import ACCEPT, Client, Decision
from smtpguard.relay.inbound import InboundServer
from smtpguard.relay.metrics import REFUSED
from smtpguard.smtp.data import normalise_line_endings
from smtpguard.smtp.text import printable
from smtpguard.store.sent import SentLookup

if TYPE_CHECKING:
    from smtpguard.classify import Classifier
    from smtpguard.config import Config
    from smtpguard.intake.verp import VerpCodec
    from smtpguard.policy.sink import VerdictSink
    from smtpguard.relay.session import RelayEnvelope, RelaySMTP

log = logging.getLogger("smtpguard.intake")

#: Client addresses whose rate is tracked at once (oldest forgotten beyond).
TRACKED_CLIENTS = 10_000
_WINDOW = 60.0


class BounceAddresses:
    """The intake listener's recipient policy: the bounce domain only, at a bounded rate."""

    def __init__(
        self, domain: str, rate: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.domain = domain
        self.rate = rate
        self._clock = clock
        self._recent: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        if recipient.rpartition("@")[2] != self.domain:
            return Decision(
                "reject", 554, "5.7.1",
                f"<{printable(recipient)}>: Relay access denied (this service takes mail"
                f" for {self.domain} only)",
            )  # fmt: skip
        now = self._clock()
        times = self._recent.pop(client.ip, None) or collections.deque()
        while times and times[0] <= now - _WINDOW:
            times.popleft()
        self._recent[client.ip] = times
        if len(self._recent) > TRACKED_CLIENTS:
            self._recent.popitem(last=False)
        if len(times) >= self.rate:
            return Decision("defer", 450, "4.7.1", "Too much returned mail from you, slow down")
        times.append(now)
        return ACCEPT

    def close(self) -> None:
        pass


class BounceServer(InboundServer):
    """The relay's SMTP server, turned into final delivery for the bounce domain."""

    def __init__(
        self,
        cfg: Config,
        *,
        sink: VerdictSink,
        classifier: Classifier,
        codec: VerpCodec,
    ) -> None:
        intake = cfg.intake
        settings = dataclasses.replace(
            cfg.relay,
            listen=intake.listen,
            max_message_size=intake.max_message_size,
            max_sessions=intake.max_sessions,
            auth_users_file="",  # no AUTH here: nobody relays through this port
        )
        super().__init__(
            dataclasses.replace(cfg, relay=settings),
            enqueue=_never_queued,
            policy=BounceAddresses(codec.domain, intake.rate_limit),
        )
        self.foreign_domain = ""  # the bounce domain is exactly what this server takes
        self._sink = sink
        self._classifier = classifier
        self._codec = codec
        # What was sent (queue and milter), asked from the worker thread only.
        self._sent = SentLookup.open(
            cfg.data_dir, busy_timeout=cfg.store.busy_timeout, group=cfg.store.group
        )
        # One thread: classification is CPU work; one message at a time bounds it.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="intake")

    def classify_peer(self, ip: str) -> tuple[bool, bool]:
        """Every client may write to the bounce domain (the policy allows nothing else)."""
        return True, super().classify_peer(ip)[1]

    def authenticate(
        self, proto: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        return AuthResult(success=False, handled=False)

    async def stop(self, timeout: float = 30.0) -> None:
        await super().stop(timeout)
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._sent.close()

    async def accept(self, proto: RelaySMTP, session: Session, envelope: RelayEnvelope) -> str:
        """After the final dot: judge, hand to the sink; 250 once committed."""
        data = normalise_line_endings(envelope.original_content or b"")
        loop = asyncio.get_running_loop()
        try:
            judgement = await loop.run_in_executor(
                self._worker,
                functools.partial(
                    judge,
                    data,
                    list(envelope.rcpt_tos),
                    codec=self._codec,
                    classifier=self._classifier,
                    actor="intake",
                    sent=self._sent,
                    now=time.time(),
                ),
            )
        except Exception:  # a classifier or store failure costs this message a retry
            log.exception("intake: judging a message from %s failed", proto.client_ip)
            return "451 4.3.0 Temporary failure, try again"
        proto.committing = True
        try:
            for batch in judgement.batches:
                # Shielded: a client hanging up must not cancel a commit half-way.
                await asyncio.shield(self._sink.accept(batch.verdicts, batch.evidence))
        except (UserError, OSError) as e:
            log.error("intake: cannot record returned mail from %s: %s", proto.client_ip, e)
            REFUSED["storage_failed"].inc()
            return "451 4.3.0 Temporary storage failure, try again"
        finally:
            proto.committing = False
        log.info(
            "intake: <%s> from %s to %s: %s",
            printable(envelope.mail_from or ""), proto.client_ip,
            ",".join(printable(r) for r in envelope.rcpt_tos), judgement.summary(),
        )  # fmt: skip
        return "250 2.0.0 Ok: " + ("recorded" if judgement.batches else "nothing to record")


async def _never_queued(_msg: object) -> str:
    raise AssertionError("the intake listener queues nothing")
