"""The one place where a relay's message-rate budget is chosen.

Every rate decision (each site's bucket and the global cap) goes through the
:class:`~smtpguard.shaping.budget.RateBudget` this returns. With
``shaping.shared`` empty that is :class:`~smtpguard.shaping.budget.LocalBudget`
(this process only). A fleet backend (Redis, ``shaping.shared =
"redis://..."``) is selected here and nowhere else; if it has an
``async aclose()``, the relay calls it when it stops.
"""

from __future__ import annotations

from smtpguard.config import Config
from smtpguard.errors import ConfigError
from smtpguard.shaping.budget import LocalBudget, RateBudget


def make_budget(cfg: Config) -> RateBudget:
    """The budget ``cfg`` asks for: local unless ``shaping.shared`` names a fleet store."""
    shaping = cfg.shaping
    if not shaping.shared:
        return LocalBudget()
    try:
        from smtpguard.shaping.redis_budget import RedisBudget
    except ImportError as e:  # the ``fleet`` extra is not installed
        if (e.name or "").partition(".")[0] != "redis":
            raise
        raise ConfigError(
            f"shaping.shared needs the redis package ({e.name} not found):"
            " pip install 'smtpguard[fleet]' (make install EXTRAS=fleet)"
        ) from None
    from smtpguard.shaping.shaper import GLOBAL

    # The global cap is what this node's own sending IPs are warmed up for, and DSNs
    # go to this node's own Postfix: those budgets stay local, the sites are shared.
    return RedisBudget(
        shaping.shared, timeout=shaping.shared_timeout, fallback_share=shaping.fallback_share,
        local_keys=(GLOBAL, "dsn"),
    )  # fmt: skip
