"""VerdictSink: the only path from a classifier verdict to the suppression list.

Every producer (the relay's delivery outcomes now; returned DSNs, complaints,
webhooks, log scans and the milter later) hands its verdicts here with an
:class:`~smtpguard.policy.evidence.Evidence`. The sink owns what they may do:

* the evidence rules (:mod:`smtpguard.policy.rules`), whatever the classifier's
  own ``suppress`` flag says;
* per evidence kind, the operator's mode (``[policy] modes``): ``enforce``
  (default) or ``record`` (a ``recorded`` history row and metrics, no entry);
* DNS answers: NXDOMAIN and null MX make a *domain* entry that expires after
  ``policy.dns_expiry`` (30 days), and only once the answer was seen again at
  least ``policy.dns_confirm_after`` (an hour) after the first sighting; a
  delivery to the domain in between forgets the first sighting. One spoofed or
  broken answer suppresses nothing;
* the storm breaker (:mod:`smtpguard.policy.storm`): while a destination is in
  a storm, new suppressions for it are *pending* - recorded (history
  ``pending``, ``smtpguard suppression pending``), not enforced at RCPT. A
  person's own act (a complaint, an unsubscribe) is never held back: the breaker
  guards against a provider calling good addresses dead, which those are not, and
  an unsubscribe must be honoured at once;
* the merge and escalation rule (:mod:`smtpguard.policy.merge`);
* soft bounces: one about the recipient's mailbox (``policy.soft_bounce_reasons``)
  is counted, and the recipient is suppressed after ``policy.soft_bounce_limit`` of
  them spanning at least ``policy.soft_bounce_span`` with no delivery in between (a
  delivery clears the count; a count left alone for ``policy.soft_bounce_forget``
  starts again). Every soft bounce counted is a ``recorded`` history row;
* expiry per reason (``policy.expiry``): a ``mailboxfull`` suppression lasts 30 days
  by default (then ``prune`` deletes it and mail is tried again), ``userunknown``
  stays.

How a pending entry is settled:

* an operator: ``smtpguard suppression pending --confirm`` / ``--discard``;
* fresh evidence, automatically: a pending address keeps receiving mail (it is
  not enforced), so the next attempt is the test. If it is delivered, the
  evidence no longer holds and the entry is **discarded**. If it fails again
  with a verdict that passes every evidence rule while its destination is no
  longer in a storm (the storm window has passed and the destination's rate is
  back to normal), the entry is **confirmed** and enforced. A pending entry is
  never confirmed by the clock alone: the addresses a provider wrongly called
  dead during an outage would all be confirmed the moment the outage ended.

Writes go through the process's one writer: :meth:`SuppressionSink.accept` on
its own, or, in the relay, :meth:`SuppressionSink.prepare` followed by running
:meth:`SinkPlan.write` inside the transaction that records the bounce (queue
state, DSN and suppression commit together).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config, PolicyConfig, parse_duration
from smtpguard.errors import UserError
from smtpguard.policy import metrics
from smtpguard.policy.evidence import Evidence
from smtpguard.policy.rules import canonical, judge, judge_soft
from smtpguard.policy.storm import StormBreaker
from smtpguard.store import fleet
from smtpguard.store import suppression as store
from smtpguard.store.db import iso
from smtpguard.store.entries import Observation, make_observation
from smtpguard.store.writer import DbThread, Writer, open_thread

if TYPE_CHECKING:
    from smtpguard.store.pg.replicator import Replicator

log = logging.getLogger("smtpguard.policy")

Outcome = Literal["suppressed", "pending", "recorded", "ignored", "discarded"]
#: Reasons that are a person's own act: never held back by the storm breaker.
PERSONAL = frozenset({"complaint", "unsubscribe"})


@dataclass(frozen=True, slots=True)
class Applied:
    """What the sink did with one verdict."""

    address: str  # normalised recipient (or domain for a domain entry)
    outcome: Outcome  # "discarded": a delivery refuted a pending entry
    why: str  # one line: which evidence rule decided


@dataclass(frozen=True, slots=True)
class SinkReport:
    """One :class:`Applied` per verdict handed in, in the same order."""

    applied: tuple[Applied, ...]


class VerdictSink(Protocol):
    async def accept(self, verdicts: Sequence[Verdict], evidence: Evidence) -> SinkReport:
        """THE ONLY PATH from a classifier Verdict to the suppression list and its history."""
        ...

    async def close(self) -> None: ...


Op = Literal["ignore", "enforce", "pending", "record", "dns", "soft", "delivered"]


@dataclass(slots=True)
class _Step:
    op: Op
    address: str
    why: str
    obs: Observation | None = None
    destination: str = ""
    record_only: bool = False  # a DNS candidate under mode "record"
    refute: bool = False  # a delivery to a destination with pending entries
    forget_dns: bool = False  # a delivery to a domain with a first DNS sighting
    forget_soft: bool = False  # a delivery to an address with soft bounces counted


def _is_delivery(v: Verdict) -> bool:
    return v.bounce == "none" and v.reason == "delivered"


class SinkPlan:
    """The sink's decisions for one batch; :meth:`write` applies them to the database.

    ``write`` may run more than once (the writer re-runs a batch that another
    operation failed), so it only touches the database and its own report;
    :meth:`done`, called once after the commit, updates metrics and the sink's
    in-memory state.
    """

    def __init__(
        self, sink: SuppressionSink, evidence: Evidence, now: float, steps: list[_Step]
    ) -> None:
        self._sink = sink
        self.evidence = evidence
        self.now = now
        self.steps = steps
        self.needs_write = any(s.op != "ignore" and not _is_noop(s) for s in steps)
        self._applied: list[Applied] = [Applied(s.address, "ignored", s.why) for s in steps]

    def write(self, conn: sqlite3.Connection) -> None:
        """Apply the plan inside the caller's transaction."""
        self._applied = [self._apply(conn, s) for s in self.steps]

    def _apply(self, conn: sqlite3.Connection, s: _Step) -> Applied:
        actor, now, cfg = self.evidence.actor, self.now, self._sink.cfg
        obs = s.obs
        if s.op == "ignore":
            return Applied(s.address, "ignored", s.why)
        if s.op == "delivered":
            if s.forget_dns:
                store.forget_dns_sighting(conn, s.address.rpartition("@")[2])
            if s.forget_soft:
                store.clear_soft_bounces(
                    conn,
                    s.address,
                    actor,
                    now,
                    "delivered since: the soft bounce count starts again",
                )
            if s.refute:
                note = "delivered since: the evidence no longer holds"
                if store.discard_pending(conn, s.address, "address", actor, now, note):
                    return Applied(s.address, "discarded", note)
            return Applied(s.address, "ignored", s.why)
        assert obs is not None
        if s.op == "record":
            store.record_history(conn, obs, "recorded", actor, now)
            return Applied(obs.address, "recorded", s.why)
        if s.op == "soft":
            return self._soft(conn, s, obs)
        if s.op == "pending":
            if store.listed(conn, obs.address, obs.kind, now) is None:
                store.put_pending(conn, obs, s.destination, actor, now)
                return Applied(obs.address, "pending", f"{s.why}; held back: storm at "
                               f"{s.destination}")  # fmt: skip
            store.write_observations(conn, [obs], actor, now)
            return Applied(obs.address, "suppressed", f"{s.why}; listed already")
        if s.op == "enforce":
            confirmed = store.confirm_pending(
                conn, obs.address, obs.kind, actor, now, "seen again outside a storm"
            )
            store.write_observations(conn, [obs], actor, now)
            why = f"{s.why}; confirms the pending entry" if confirmed else s.why
            return Applied(obs.address, "suppressed", why)
        # op == "dns": a domain candidate, waiting for its second sighting.
        first, count = store.note_dns_sighting(conn, obs, now, stale_after=cfg.dns_expiry)
        if count >= 2 and now - first >= cfg.dns_confirm_after:
            why = f"{s.why}; seen since {iso(first)} ({count} times)"
            if s.record_only:
                store.record_history(conn, obs, "recorded", actor, now)
                return Applied(obs.address, "recorded", f"{why}; mode record")
            store.write_observations(conn, [obs], actor, now)
            store.forget_dns_sighting(conn, obs.address)
            return Applied(obs.address, "suppressed", why)
        wait = (
            f"{s.why}; suppresses only when seen again after {iso(first + cfg.dns_confirm_after)}"
        )
        if count == 1:
            store.record_history(
                conn, replace(obs, note="first sighting of this DNS answer"), "recorded", actor, now
            )
        return Applied(obs.address, "recorded", wait)

    def _soft(self, conn: sqlite3.Connection, s: _Step, obs: Observation) -> Applied:
        """Count a soft bounce; suppress when the count and its span reach the limits."""
        actor, now, cfg = self.evidence.actor, self.now, self._sink.cfg
        first, count = store.note_soft_bounce(conn, obs, now, stale_after=cfg.soft_bounce_forget)
        tally = f"soft bounce {count} of {cfg.soft_bounce_limit} since {iso(first)}"
        if count >= cfg.soft_bounce_limit and now - first >= cfg.soft_bounce_span:
            store.forget_soft_bounces(conn, obs.address)
            store.write_observations(conn, [replace(obs, note=tally, count=count)], actor, now)
            return Applied(obs.address, "suppressed", f"{s.why}; {tally}")
        store.record_history(conn, replace(obs, note=tally), "recorded", actor, now)
        return Applied(obs.address, "recorded", f"{s.why}; {tally}")

    def done(self) -> SinkReport:
        """After the commit: metrics, logs and the sink's memory of what is pending."""
        sink, kind = self._sink, self.evidence.kind
        for step, applied in zip(self.steps, self._applied, strict=True):
            if step.op != "delivered" or applied.outcome == "discarded":
                metrics.VERDICTS.labels(kind, applied.outcome).inc()
            if applied.outcome == "suppressed" and step.obs is not None:
                metrics.SUPPRESSED.labels(step.obs.reason).inc()
            elif applied.outcome == "pending":
                sink.pending_destinations.add(step.destination)
            if step.op == "dns":
                if applied.outcome == "suppressed":
                    sink.dns_domains.discard(applied.address)
                else:
                    sink.dns_domains.add(applied.address)
            elif step.forget_dns:
                sink.dns_domains.discard(step.address.rpartition("@")[2])
            if step.op == "soft":
                if applied.outcome == "recorded":
                    sink.soft_addresses.add(applied.address)
                else:
                    sink.soft_addresses.discard(applied.address)
            elif step.forget_soft:
                sink.soft_addresses.discard(step.address)
        return SinkReport(tuple(self._applied))


def _is_noop(s: _Step) -> bool:
    return s.op == "delivered" and not (s.refute or s.forget_dns or s.forget_soft)


class SuppressionSink:
    """The :class:`VerdictSink` over the suppression store (see the module doc)."""

    def __init__(
        self,
        cfg: PolicyConfig,
        writer: Writer,
        *,
        owned: DbThread | None = None,
        pending_destinations: set[str] | None = None,
        dns_domains: set[str] | None = None,
        soft_addresses: set[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self._writer = writer
        self._owned = owned
        self.storm = StormBreaker(cfg.storm_share, cfg.storm_min_attempts, cfg.storm_window)
        self._modes = dict(cfg.modes)
        #: Destinations with pending entries / domains with a first DNS sighting: a
        #: delivery there may refute them. Loaded at open, kept by this process; a
        #: stale member only costs one indexed read in a transaction held anyway.
        self.pending_destinations = pending_destinations or set()
        self.dns_domains = dns_domains or set()
        #: Addresses with soft bounces counted: a delivery to one clears its count.
        self.soft_addresses = soft_addresses or set()
        self._soft_reasons = frozenset(cfg.soft_bounce_reasons) if cfg.soft_bounce_limit else None
        self._replicator: Replicator | None = None
        self._expiry = {reason: parse_duration(d) for reason, d in cfg.expiry.items()}

    @classmethod
    async def open(cls, cfg: Config, *, writer: Writer | None = None) -> SuppressionSink:
        """The sink for this process; ``writer`` is the process's writer (one of its own
        is opened when None)."""
        owned = None
        if writer is None:
            writer = owned = await open_thread(
                cfg.data_dir, busy_timeout=cfg.store.busy_timeout, transactional=True,
                name="writer", group=cfg.store.group,
            )  # fmt: skip

        def load(conn: sqlite3.Connection) -> tuple[set[str], set[str], set[str]]:
            return (
                store.pending_destinations(conn),
                store.dns_sighting_domains(conn),
                store.soft_bounce_addresses(conn),
            )

        pending, dns, soft = await writer.call(load, durable=False)
        sink = cls(
            cfg.policy, writer, owned=owned, pending_destinations=pending, dns_domains=dns,
            soft_addresses=soft,
        )  # fmt: skip
        node = fleet.prepare(cfg)
        if node is not None and owned is not None:
            # A process whose sink is its only writer (intake, logscan, webhooks): it keeps
            # the node in sync while it runs and pushes what it recorded before it exits.
            sink._replicator = await fleet.start_replicator(
                cfg, node, owned, on_pulled=sink.note_fleet_rows
            )
        return sink

    async def close(self) -> None:
        if self._replicator is not None:
            await self._replicator.stop()
        if self._owned is not None:
            self._owned.close()

    @property
    def writer(self) -> Writer:
        """The process's writer this sink writes through."""
        return self._writer

    def note_fleet_rows(self, destinations: set[str], soft_addresses: set[str]) -> None:
        """Other nodes' pending entries and soft-bounce counts reached this node's cache:
        a delivery here may now refute or clear them (see :meth:`prepare`)."""
        self.pending_destinations |= destinations
        self.soft_addresses |= soft_addresses

    # -- deciding

    def prepare(
        self, verdicts: Sequence[Verdict], evidence: Evidence, now: float | None = None
    ) -> SinkPlan:
        """Apply the evidence rules, the modes and the storm breaker; nothing is written.

        Counts every verdict as an attempt to its destination (deliveries too).
        """
        now = time.time() if now is None else now
        mode = self._modes.get(evidence.kind, "enforce")
        steps: list[_Step] = []
        for v in verdicts:
            if _is_delivery(v):
                # The common case, kept cheap: no normalising unless there is something
                # to refute (the relay's recipient domains are normalised already).
                domain = v.recipient.rpartition("@")[2].lower()
                destination = evidence.destination or domain
                self.storm.attempt(destination, now)
                refute = destination in self.pending_destinations
                forget = domain in self.dns_domains
                # Cheap first: an ASCII address's key is its lower case (quoted local
                # parts aside); only a possible hit pays for normalising.
                soft = bool(self.soft_addresses) and (
                    not v.recipient.isascii() or v.recipient.lower() in self.soft_addresses
                )
                rcpt = canonical(v.recipient) if refute or forget or soft else v.recipient
                steps.append(
                    _Step(
                        "delivered", rcpt, "delivered", refute=refute, forget_dns=forget,
                        forget_soft=soft and rcpt in self.soft_addresses,
                    )
                )  # fmt: skip
                continue
            rcpt = canonical(v.recipient)
            destination = evidence.destination or rcpt.rpartition("@")[2]
            self.storm.attempt(destination, now)
            j = judge(v, evidence, rcpt)
            if j.ruling == "ignore" and self._soft_reasons and v.bounce == "soft":
                soft_j = judge_soft(v, evidence, rcpt, self._soft_reasons)
                j = soft_j if soft_j.ruling != "ignore" else j
            if j.ruling == "ignore":
                steps.append(_Step("ignore", rcpt, j.why))
                continue
            try:
                obs = self._observation(v, evidence, j.ruling, rcpt, j.reason, now)
            except UserError as e:
                steps.append(_Step("ignore", rcpt, f"not recordable: {e}"))
                continue
            if j.ruling == "domain":
                steps.append(_Step("dns", obs.address, j.why, obs, record_only=mode == "record"))
            elif j.ruling == "record" or (j.ruling == "soft" and mode == "record"):
                steps.append(_Step("record", rcpt, j.why, obs))
            elif j.ruling == "soft":
                steps.append(_Step("soft", rcpt, j.why, obs, destination))
            elif j.reason not in PERSONAL and self.storm.suppressing(destination, now):
                op: Op = "record" if mode == "record" else "pending"
                steps.append(_Step(op, rcpt, j.why, obs, destination))
            elif mode == "record":
                steps.append(_Step("record", rcpt, f"{j.why}; mode record", obs))
            else:
                steps.append(_Step("enforce", rcpt, j.why, obs, destination))
        return SinkPlan(self, evidence, now, steps)

    def _observation(
        self, v: Verdict, evidence: Evidence, ruling: str, rcpt: str, reason: str, now: float
    ) -> Observation:
        if ruling == "domain":
            return make_observation(
                rcpt.rpartition("@")[2], reason, evidence="dns", kind="domain", status=v.status,
                reply_code=v.reply_code, diagnostic=v.diagnostic,
                expires=now + self.cfg.dns_expiry, note=evidence.note,
            )  # fmt: skip
        expiry = self._expiry.get(reason)
        return make_observation(
            rcpt, reason, evidence=evidence.kind, status=v.status, reply_code=v.reply_code,
            diagnostic=v.diagnostic, note=evidence.note,
            expires=now + expiry if expiry is not None else None,
        )  # fmt: skip

    # -- applying

    async def accept(
        self, verdicts: Sequence[Verdict], evidence: Evidence, *, now: float | None = None
    ) -> SinkReport:
        """Decide and write (one durable transaction on this process's writer).

        ``now`` (default: the clock) is for replaying what happened at another time.
        """
        plan = self.prepare(verdicts, evidence, now)
        if plan.needs_write:
            await self._writer.call(plan.write)
        return plan.done()

    async def sweep(self, now: float | None = None) -> None:
        """Housekeeping: end storms whose window passed; forget stale DNS sightings."""
        now = time.time() if now is None else now
        self.storm.storms(now)
        before = now - self.cfg.dns_expiry
        soft_before = now - self.cfg.soft_bounce_forget

        def prune(conn: sqlite3.Connection) -> None:
            store.prune_dns_sightings(conn, before)
            store.prune_soft_bounces(conn, soft_before)

        try:
            await self._writer.call(prune, durable=False)
        except Exception as e:  # housekeeping: the next sweep tries again
            log.error("pruning stale DNS sightings and soft bounce counts failed: %s", e)
