"""What an attempt's verdicts do: delivered, bounced (DSN, suppression), deferred, expired.

The delivery client produces, per recipient, either a success reply or a
:class:`~smtpguard.classify.verdict.Verdict`. This module turns those into
queue state, history events and DSNs, and hands every verdict (deliveries
too: the storm breaker counts attempts) to the policy's
:class:`~smtpguard.policy.sink.VerdictSink` with its evidence:

* ``bounce == "hard"``: the recipient is done (``bounced``). The sender gets an
  RFC 3464 DSN, one per :meth:`OutcomeHandler.apply` listing every failure in
  it (the delivery side hands one message's reportable failures from all its
  destinations of a round over in one call, see :meth:`OutcomeHandler.awaits_dsn`),
  built with bounded work (:meth:`OutcomeHandler._dsn_bytes`),
  when :func:`~smtpguard.relay.dsn.dsn_wanted` says so (never to
  the null sender, never for Auto-Submitted mail, honouring NOTIFY) and
  ``dsn.enabled`` is on. The DSN is enqueued as a new queue message with the
  null sender in the same transaction that records the bounce, so it is as
  durable as any other mail and retried like it (a DSN never gets a DSN: its
  sender is null). Whether the address goes on the suppression list is the
  sink's decision (the evidence rules, the storm breaker), written in that
  same transaction; a hard rejection it does not suppress (policy,
  reputation, content, or evidence that does not name the recipient) is
  logged and counted per destination domain.
* anything else: the recipient is deferred with exponential backoff
  (:func:`~smtpguard.relay.scheduler.retry_delay`, stretched by up to
  ``jitter`` at random so a throttled site's deferrals come back spread); a greylisting verdict
  (``extra["greylist"]``) waits at least ``delivery.greylist_delay`` or the
  server's own ``retry_after``. Once ``delivery.queue_lifetime`` has run out
  the recipient is ``expired`` and the sender gets a DSN.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.policy.evidence import Evidence, EvidenceKind
from smtpguard.policy.sink import Applied, SinkPlan, SuppressionSink
from smtpguard.relay import metrics
from smtpguard.relay.dsn import DsnRecipient, build_dsn, dsn_wanted, returned_bytes_needed
from smtpguard.relay.observe import AttemptRecord, DsnQueued, Observer, Status, Timing
from smtpguard.relay.scheduler import retry_delay
from smtpguard.smtp.status import leading_status
from smtpguard.smtp.text import log_safe
from smtpguard.store.messages import InboundMessage, Recipient
from smtpguard.store.queue import (
    QueuedMessage,
    QueuedRecipient,
    QueueStore,
    RecipientResult,
    format_qid,
)

log = logging.getLogger("smtpguard.outcome")

#: Status written for a recipient whose queue lifetime ran out (RFC 3463 X.4.7).
EXPIRED_STATUS = "5.4.7"
#: Bound on reading the original and building a DSN from it (both bounded by size,
#: so this only matters for a stalled disk or a bug: the bounce is recorded anyway).
DSN_TIMEOUT = 10.0


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
    dns: bool = False  # the verdict is a DNS answer (routing), not a reply
    transaction: int = 0  # which SMTP transaction gave it (after DATA: who shared the reply)
    timing: Timing | None = None  # for the delivery log's delays

    @property
    def evidence(self) -> EvidenceKind:
        """What kind of evidence this attempt is for the sink."""
        v = self.verdict
        if self.dns:
            return "dns"
        if v is None or v.stage in AFTER_DATA:
            return "data-reply"
        return "rcpt-reply" if v.stage == "rcpt" else "session-reply"


#: Result event -> the delivery log's status (Postfix's words).
_STATUS: dict[str, Status] = {
    "delivered": "sent", "deferred": "deferred", "bounced": "bounced", "expired": "expired",
}  # fmt: skip

#: Verdict stages that answer the final dot (the whole transaction).
AFTER_DATA = frozenset({"data", "eom"})


class OutcomeHandler:
    """Applies attempts to the queue; owned by the relay, one per process."""

    def __init__(
        self,
        cfg: Config,
        store: QueueStore,
        *,
        sink: SuppressionSink | None = None,
        on_deferred: Callable[[int, float], None] | None = None,
        observer: Observer | None = None,
        jitter: float = 0.0,
    ) -> None:
        """``jitter``: each retry waits up to this fraction longer, at random, so that
        recipients deferred together (a throttled site) do not all come back at once."""
        self._cfg = cfg
        self._jitter = jitter
        self._store = store
        self._sink = sink
        self._on_deferred = on_deferred
        self._observer = observer

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
        if self._jitter:
            delay *= 1.0 + random.uniform(0.0, self._jitter)
        expiry = msg.received_at + d.queue_lifetime
        return max(min(now + delay, expiry), now)

    def expired(self, msg: QueuedMessage, now: float) -> bool:
        return now >= msg.received_at + self._cfg.delivery.queue_lifetime

    # -- applying -------------------------------------------------------------

    async def apply(
        self, msg: QueuedMessage, attempts: Sequence[Attempt], now: float | None = None
    ) -> None:
        """Record every attempt, any DSN and what the sink decides: one transaction."""
        now = time.time() if now is None else now
        results: list[RecipientResult] = []
        failed: list[tuple[Attempt, str, str, str]] = []  # attempt, status, diagnostic, reason
        for a in attempts:
            r = a.recipient
            if a.verdict is None:
                results.append(
                    RecipientResult(
                        r.id, r.message_id, r.address, "delivered", "delivered",
                        code=a.code, status=leading_status(a.text), reason="delivered",
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
        plans = self._plans(attempts, now)
        writes = [p.write for _, p in plans if p.needs_write]
        created = await self._store.record(results, dsns, now, also=writes)
        for res in results:
            if res.state == "queued" and self._on_deferred is not None:
                self._on_deferred(res.message_id, res.next_attempt)
        sunk: dict[int, Applied] = {}
        for group, plan in plans:
            for a, applied in zip(group, plan.done().applied, strict=True):
                sunk[id(a)] = applied
                v = a.verdict
                if (
                    v is not None
                    and v.bounce == "hard"
                    and applied.outcome not in ("suppressed", "pending")
                ):
                    r = a.recipient
                    metrics.REJECTIONS.labels(metrics.domain_label(r.domain), v.reason).inc()
                    log.warning(
                        "rejected without suppression: %s to=<%s> reason=%s %s %s: %s (%s)",
                        msg.qid, log_safe(r.address), v.reason, v.reply_code, v.status,
                        log_safe(_reply_text(a)), log_safe(applied.why),
                    )  # fmt: skip
        if self._observer is not None:
            self._observe(msg, attempts, results, sunk, created, dsns, now)

    def _observe(
        self, msg: QueuedMessage, attempts: Sequence[Attempt], results: Sequence[RecipientResult],
        sunk: dict[int, Applied], created: Sequence[int],
        dsns: Sequence[tuple[int, InboundMessage]], now: float,
    ) -> None:  # fmt: skip
        """Tell the observer (delivery log, daily counts) what was just committed."""
        assert self._observer is not None
        records = []
        for a, res in zip(attempts, results, strict=True):
            applied = sunk.get(id(a))
            v = a.verdict
            records.append(
                AttemptRecord(
                    qid=msg.qid,
                    kind=msg.kind,
                    recipient=a.recipient.address,
                    domain=a.recipient.domain,
                    status=_STATUS[res.event],
                    relay=res.remote_host,
                    code=res.code,
                    dsn=_logged_status(res),
                    reply=a.text if a.code else res.diagnostic,
                    stage=v.stage if v is not None else "data",
                    reason=res.reason,
                    suppression=applied.outcome if applied else "",
                    suppression_why=applied.why if applied else "",
                    arrived_at=msg.arrived_at,
                    received_at=msg.received_at,
                    timing=a.timing,
                    finished=now,
                )
            )
        self._observer.attempts(records)
        for dsn_id, (_, dsn) in zip(created, dsns, strict=True):
            self._observer.dsn(DsnQueued(msg.qid, format_qid(dsn_id), dsn.recipients[0].address))

    def _plans(
        self, attempts: Sequence[Attempt], now: float
    ) -> list[tuple[list[Attempt], SinkPlan]]:
        """The sink's plan for each kind of evidence among the attempts (prepared, not written).

        A reply after DATA speaks for the transaction: its evidence lists every
        recipient that was in it (those accepted at RCPT).
        """
        if self._sink is None:
            return []
        groups: dict[tuple[EvidenceKind, int], list[Attempt]] = {}
        for a in attempts:
            groups.setdefault((a.evidence, a.transaction), []).append(a)
        plans = []
        for (kind, _), group in groups.items():
            evidence = Evidence(kind, "relay")
            if kind == "data-reply":
                evidence = Evidence(
                    kind, "relay", transaction_recipients=tuple(a.recipient.address for a in group)
                )
            verdicts = [_sink_verdict(a) for a in group]
            plans.append((group, self._sink.prepare(verdicts, evidence, now)))
        return plans

    def _dsn_wanted(self, msg: QueuedMessage, r: QueuedRecipient) -> bool:
        """Whether a failure of ``r`` goes back to the sender in a DSN."""
        if not self._cfg.dsn.enabled or msg.kind == "dsn" or not msg.mail_from:
            return False
        return dsn_wanted(mail_from=msg.mail_from, auto_submitted=msg.auto_submitted,
                          notify=r.notify, action="failed")  # fmt: skip

    def awaits_dsn(self, msg: QueuedMessage, a: Attempt, now: float) -> bool:
        """This attempt ends its recipient (bounced or expired) with a DSN to the sender."""
        v = a.verdict
        if v is None or not (v.bounce == "hard" or self.expired(msg, now)):
            return False
        return self._dsn_wanted(msg, a.recipient)

    async def _dsns(
        self, msg: QueuedMessage, failed: Sequence[tuple[Attempt, str, str, str]], now: float
    ) -> list[tuple[int, InboundMessage]]:
        """At most one DSN per message per call, listing every failed recipient.

        Never raises: a DSN that cannot be built as asked is built with less
        (see :meth:`_dsn_bytes`), and the bounce is recorded whatever happens here.
        """
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
            if self._dsn_wanted(msg, a.recipient)
        ]
        if not recipients:
            return []
        data = await self._dsn_bytes(msg, recipients, now)
        if data is None:
            return []
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

    async def _dsn_bytes(
        self, msg: QueuedMessage, recipients: Sequence[DsnRecipient], now: float
    ) -> bytes | None:
        """The DSN, built off the event loop from at most the start of the original.

        Only what can be returned is read (:func:`~smtpguard.relay.dsn.returned_bytes_needed`:
        the whole message only when RET=FULL and it is within ``dsn.return_size_limit``,
        else the first 64 KiB for its header section), and nothing is parsed, so
        the work is bounded whatever the message holds. If building fails anyway
        (or the body cannot be read), a DSN with the header section only, then one
        without the original, is sent instead; None only if even that fails.
        """
        limit = self._cfg.dsn.return_size_limit
        args = {
            "mail_from": msg.mail_from, "envid": msg.envid, "recipients": recipients,
            "reporting_mta": self._cfg.relay.hostname, "arrival_date": msg.received_at,
            "now": now, "original_size": msg.size, "return_limit": limit,
        }  # fmt: skip
        original: bytes | None = None
        try:
            need = returned_bytes_needed(msg.ret, msg.size, limit)
            original = await asyncio.wait_for(self._store.body_head(msg.id, need), DSN_TIMEOUT)
            return await asyncio.wait_for(
                asyncio.to_thread(functools.partial(build_dsn, original=original, ret=msg.ret,
                                                    **args)),  # type: ignore[arg-type]
                DSN_TIMEOUT,
            )  # fmt: skip
        except Exception as e:
            what = "building it failed" if original is not None else "cannot read the original"
            log.error("DSN for %s: %s (%r); sending a simpler one", msg.qid, what, e)
        for fallback in (original, None) if original is not None else (None,):
            try:
                return build_dsn(original=fallback, ret="HDRS", **args)  # type: ignore[arg-type]
            except Exception as e:
                log.error("DSN for %s: the fallback failed too (%r)", msg.qid, e)
        return None


def _logged_status(res: RecipientResult) -> str:
    """The RFC 3463 status the delivery log shows: what the sender's DSN says for an expiry,
    else the reply's, else the class of the result (as Postfix logs ``dsn=4.0.0``)."""
    if res.event == "expired":
        return EXPIRED_STATUS
    return res.status or {"delivered": "2.0.0", "deferred": "4.0.0"}.get(res.event, "5.0.0")


def _sink_verdict(a: Attempt) -> Verdict:
    """The verdict as the sink weighs it: the whole reply as its text (a delivery too)."""
    if a.verdict is None:
        return Verdict(
            recipient=a.recipient.address, reply_code=a.code, reason="delivered", bounce="none",
            diagnostic=a.text, remote_host=a.remote_host, stage="data", format="relay",
        )  # fmt: skip
    return replace(a.verdict, diagnostic=_reply_text(a)[:1000])


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
