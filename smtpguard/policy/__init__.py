"""Decisions about recipients and the suppression list; no I/O beyond the store it is given.

Two seams, one room:

* :class:`~smtpguard.policy.recipient.RecipientPolicy` - may this recipient be
  accepted? ``check(sender, recipient, client, authenticated) -> Decision``,
  synchronous (one indexed read). The relay's RCPT uses it; the milter and the
  Postfix policy service will.
* :class:`~smtpguard.policy.sink.VerdictSink` - the only path from a classifier
  verdict to the suppression list and its history:
  ``await accept(verdicts, evidence) -> SinkReport``. It owns the evidence rules
  (:mod:`~smtpguard.policy.rules`), the storm breaker
  (:mod:`~smtpguard.policy.storm`) and the merge rule (:mod:`~smtpguard.policy.merge`).

Construction helpers for any process: :func:`open_recipient_policy` and
:func:`open_sink`. (The submodules are imported lazily: the store imports
:mod:`~smtpguard.policy.merge` and :mod:`~smtpguard.policy.evidence`, and this
package must not import the store back at import time.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpguard.policy.evidence import EVIDENCE_KINDS, Evidence, EvidenceKind

if TYPE_CHECKING:
    from smtpguard.config import Config
    from smtpguard.policy.recipient import RecipientPolicy
    from smtpguard.policy.sink import SuppressionSink
    from smtpguard.store.writer import Writer

__all__ = [
    "EVIDENCE_KINDS",
    "Evidence",
    "EvidenceKind",
    "open_recipient_policy",
    "open_sink",
]


def open_recipient_policy(cfg: Config) -> RecipientPolicy:
    """The recipient policy for this process (synchronous; ``.close()`` when done)."""
    from smtpguard.policy.recipient import SuppressionPolicy
    from smtpguard.store import fleet
    from smtpguard.store.suppression import SuppressionStore

    node = fleet.prepare(cfg)  # a fleet node: this database is the fleet list's cache
    store = SuppressionStore.open(
        cfg.data_dir, busy_timeout=cfg.store.busy_timeout, group=cfg.store.group
    )
    policy = SuppressionPolicy(store, reply=cfg.relay.suppressed_reply)
    if node is None or cfg.store.unknown == "accept":
        return policy
    from smtpguard.policy.stale import StaleCacheGuard
    from smtpguard.store.db import connect

    conn = connect(cfg.data_dir, busy_timeout=cfg.store.busy_timeout, group=cfg.store.group)
    return StaleCacheGuard(policy, conn, max_staleness=cfg.store.max_staleness)


async def open_sink(cfg: Config, *, writer: Writer | None = None) -> SuppressionSink:
    """The verdict sink for this process (``await sink.close()`` when done).

    ``writer``: the process's one writer, when it has one already (the relay's
    queue writer, so a bounce and its suppression share a transaction).
    """
    from smtpguard.policy.sink import SuppressionSink
    from smtpguard.store import fleet

    fleet.prepare(cfg)  # before the writer connects: a fleet node's writes leave outbox rows
    return await SuppressionSink.open(cfg, writer=writer)
