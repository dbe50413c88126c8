"""What an attempt's verdicts do: delivered, bounced (DSN, suppression), deferred, expired.

The delivery client produces, per recipient, either a success reply or a
:class:`~smtpguard.classify.verdict.Verdict`. This module turns those into
queue state, history events, DSNs and suppression entries, and nothing else:

* ``bounce == "hard"``: the recipient is done (``bounced``). The sender gets an
  RFC 3464 DSN when :func:`~smtpguard.relay.dsn.dsn_wanted` says so (never to
  the null sender, never for Auto-Submitted mail, honouring NOTIFY) and
  ``dsn.enabled`` is on. The DSN is enqueued as a new queue message with the
  null sender in the same transaction that records the bounce, so it is as
  durable as any other mail and retried like it (a DSN never gets a DSN: its
  sender is null). If ``verdict.suppress``, the address goes on the
  suppression list with the reply as evidence; a hard rejection that does not
  suppress (policy, reputation, content) is logged and counted per destination
  domain, since it is the sender's problem, not the address's.
* anything else: the recipient is deferred with exponential backoff
  (:func:`~smtpguard.relay.scheduler.retry_delay`); a greylisting verdict
  (``extra["greylist"]``) waits at least ``delivery.greylist_delay`` or the
  server's own ``retry_after``. Once ``delivery.queue_lifetime`` has run out
  the recipient is ``expired`` and the sender gets a DSN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.relay import metrics
from smtpguard.relay.envelope import InboundMessage, Recipient
from smtpguard.relay.scheduler import retry_delay
from smtpguard.store.queue import QueuedMessage, QueuedRecipient, QueueStore, RecipientResult

log = logging.getLogger("smtpguard.outcome")

#: Status written for a recipient whose queue lifetime ran out (RFC 3463 X.4.7).
EXPIRED_STATUS = "5.4.7"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt did for one recipient.

    ``verdict`` is None when the next hop accepted the message for this
    recipient; ``code``/``text`` are then the success reply.
    """

    recipient: QueuedRecipient
    verdict: Verdict | None
    code: str = ""
    text: str = ""
    remote_host: str = ""


def _status_of(text: str) -> str:
    word = text.split(" ", 1)[0]
    parts = word.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return word
    return ""


class OutcomeHandler:
    """Applies attempts to the queue; owned by the relay, one per process."""

    def __init__(
        self,
        cfg: Config,
        store: QueueStore,
        *,
        record_suppression: Callable[..., Awaitable[Any]] | None = None,
        on_deferred: Callable[[int, float], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._record_suppression = record_suppression
        self._on_deferred = on_deferred

    # -- policy ---------------------------------------------------------------

    def next_attempt(
        self, msg: QueuedMessage, rcpt: QueuedRecipient, v: Verdict, now: float
    ) -> float:
        """When to try again after a soft failure; never later than the expiry time."""
        d = self._cfg.delivery
        delay = retry_delay(d, rcpt.attempts + 1)
        if v.extra.get("greylist"):
            after = 0.0
            try:
                after = float(v.extra.get("retry_after", "0") or 0)
            except ValueError:
                after = 0.0
            delay = max(delay, d.greylist_delay, after)
        expiry = msg.received_at + d.queue_lifetime
        return max(min(now + delay, expiry), now)

    def expired(self, msg: QueuedMessage, now: float) -> bool:
        return now >= msg.received_at + self._cfg.delivery.queue_lifetime

    # -- applying -------------------------------------------------------------

    async def apply(
        self, msg: QueuedMessage, attempts: Sequence[Attempt], now: float | None = None
    ) -> None:
        """Record every attempt (one transaction, with any DSN), then suppress."""
        now = time.time() if now is None else now
        results: list[RecipientResult] = []
        failed: list[tuple[Attempt, str, str, str]] = []  # attempt, status, diagnostic, reason
        to_suppress: list[Attempt] = []
        for a in attempts:
            r = a.recipient
            if a.verdict is None:
                results.append(
                    RecipientResult(
                        r.id, r.message_id, r.address, "delivered", "delivered",
                        code=a.code, status=_status_of(a.text), reason="delivered",
                        diagnostic=a.text[:1000], remote_host=a.remote_host,
                    )
                )  # fmt: skip
                metrics.DELIVERIES.labels("delivered").inc()
                continue
            v = a.verdict
            diag = _reply_text(a)[:1000]
            host = v.remote_host or a.remote_host
            if v.bounce == "hard":
                results.append(
                    RecipientResult(
                        r.id, r.message_id, r.address, "bounced", "bounced", code=v.reply_code,
                        status=v.status, reason=v.reason, diagnostic=diag, remote_host=host,
                    )
                )  # fmt: skip
                failed.append((a, v.status or "5.0.0", diag, v.reason))
                metrics.DELIVERIES.labels("bounced").inc()
                if v.suppress:
                    to_suppress.append(a)
                else:
                    metrics.REJECTIONS.labels(metrics.domain_label(r.domain), v.reason).inc()
                    log.warning(
                        "rejected without suppression: %s to=<%s> reason=%s %s %s: %s",
                        msg.qid, r.address, v.reason, v.reply_code, v.status, diag,
                    )  # fmt: skip
            elif self.expired(msg, now):
                results.append(
                    RecipientResult(
                        r.id, r.message_id, r.address, "expired", "expired", code=v.reply_code,
                        status=v.status, reason="expired", diagnostic=diag, remote_host=host,
                    )
                )  # fmt: skip
                failed.append((a, EXPIRED_STATUS, diag, "expired"))
                metrics.DELIVERIES.labels("expired").inc()
            else:
                nxt = self.next_attempt(msg, r, v, now)
                results.append(
                    RecipientResult(
                        r.id, r.message_id, r.address, "queued", "deferred", next_attempt=nxt,
                        code=v.reply_code, status=v.status, reason=v.reason, diagnostic=diag,
                        remote_host=host,
                    )
                )  # fmt: skip
                metrics.DELIVERIES.labels("deferred").inc()
        dsns = await self._dsns(msg, failed, now)
        await self._store.record(results, dsns, now)
        for res in results:
            if res.state == "queued" and self._on_deferred is not None:
                self._on_deferred(res.message_id, res.next_attempt)
        for a in to_suppress:
            await self._suppress(a)

    async def _suppress(self, a: Attempt) -> None:
        v = a.verdict
        assert v is not None
        if self._record_suppression is None:
            return
        try:
            await self._record_suppression(
                a.recipient.address, v.reason, source="smtp-reply", actor="relay",
                status=v.status, reply_code=v.reply_code,
                diagnostic=_reply_text(a)[:1000],
            )  # fmt: skip
            metrics.SUPPRESSED.labels(v.reason).inc()
        except Exception as e:  # the bounce is recorded; losing the suppression is not fatal
            log.error("could not record suppression of <%s>: %s", a.recipient.address, e)

    async def _dsns(
        self, msg: QueuedMessage, failed: Sequence[tuple[Attempt, str, str, str]], now: float
    ) -> list[tuple[int, InboundMessage]]:
        """At most one DSN per message per attempt, listing every failed recipient."""
        if not failed or not self._cfg.dsn.enabled or msg.kind == "dsn" or not msg.mail_from:
            return []
        from smtpguard.relay.dsn import DsnRecipient, build_dsn, dsn_wanted

        recipients = [
            DsnRecipient(
                address=a.recipient.address,
                orcpt=a.recipient.orcpt,
                action="failed",
                status=status,
                diagnostic=_diagnostic_code(a, diag),
                remote_mta=(a.verdict.remote_host if a.verdict else "") or a.remote_host,
                last_attempt=now,
            )
            for a, status, diag, _reason in failed
            if dsn_wanted(
                mail_from=msg.mail_from,
                auto_submitted=msg.auto_submitted,
                notify=a.recipient.notify,
                action="failed",
            )
        ]
        if not recipients:
            return []
        try:
            original = await self._store.body(msg.id)
        except Exception as e:
            log.error("no DSN for %s: cannot read the original: %s", msg.qid, e)
            return []
        data = build_dsn(
            original=original, mail_from=msg.mail_from, envid=msg.envid, ret=msg.ret,
            recipients=recipients, reporting_mta=self._cfg.relay.hostname,
            arrival_date=msg.received_at, now=now,
        )  # fmt: skip
        dsn = InboundMessage(
            mail_from="",
            recipients=(Recipient(address=msg.mail_from),),
            data=data,
            smtputf8=msg.smtputf8,
            body="8BITMIME" if msg.body_type == "8BITMIME" else "7BIT",
            received_at=now,
            auto_submitted=True,
            client_address="smtpguard",
        )
        metrics.DSNS.inc()
        return [(msg.id, dsn)]


def _reply_text(a: Attempt) -> str:
    """The evidence: the whole reply (``550 5.1.1 <a@b>: User unknown``), else the diagnostic."""
    if a.code and a.text:
        return f"{a.code} {' '.join(a.text.split())}"
    return a.verdict.diagnostic if a.verdict else a.text


def _diagnostic_code(a: Attempt, diag: str) -> str:
    """The DSN's Diagnostic-Code (RFC 3464 section 2.3.6): ``smtp; 550 5.1.1 ...``."""
    if a.code and a.text:
        return f"smtp; {diag}"
    return f"x-smtpguard; {diag}"
