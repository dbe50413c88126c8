"""Joining a node to the fleet (``store.backend = "postgresql"``): one call per process.

:func:`prepare` marks the data directory's database as a fleet node's cache
(:func:`smtpguard.store.outbox.attach`) before the process opens its own
connections, so every change it makes leaves an outbox row. It checks that the
PostgreSQL driver is installed, but does not contact PostgreSQL: a node starts,
and answers from its cache, while PostgreSQL is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from smtpguard.config import Config
from smtpguard.store.outbox import NodeIdentity, attach

if TYPE_CHECKING:
    from smtpguard.store.pg.replicator import Replicator
    from smtpguard.store.writer import Writer


def enabled(cfg: Config) -> bool:
    return cfg.store.backend == "postgresql"


def prepare(cfg: Config) -> NodeIdentity | None:
    """Attach this node's database to the fleet; None on the SQLite backend."""
    if not enabled(cfg):
        return None
    from smtpguard.store.pg.connect import driver, node_name

    driver()
    return attach(
        cfg.data_dir, node_name(cfg), busy_timeout=cfg.store.busy_timeout, group=cfg.store.group
    )


async def start_replicator(
    cfg: Config,
    node: NodeIdentity,
    writer: Writer | None = None,
    *,
    on_pulled: Callable[[set[str], set[str]], None] | None = None,
) -> Replicator:
    """A replicator (push, listen, pull), running; ``await r.stop()`` at the end.

    ``writer``: the process's one writer (the relay's queue writer, the milter's); a
    process without one (the policy service) gets a writer thread of the replicator's own.
    Every long-running smtpguard process of a node runs one, so a node keeps in sync
    whichever of them it runs; two on one node are harmless (a push is applied once,
    a pull writes the same rows). ``on_pulled(destinations, soft_addresses)`` hears of
    other nodes' pending entries and soft-bounce counts as they arrive (the sink's hints).
    """
    from smtpguard.store.pg.replicator import Replicator
    from smtpguard.store.writer import open_thread

    owned = None
    if writer is None:
        writer = owned = await open_thread(
            cfg.data_dir, busy_timeout=cfg.store.busy_timeout, transactional=True,
            name="fleet-writer", group=cfg.store.group,
        )  # fmt: skip
    replicator = Replicator(cfg, node, writer, owned=owned, on_pulled=on_pulled)
    await replicator.start()
    return replicator
