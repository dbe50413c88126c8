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
    shared = cfg.shaping.shared
    if not shared:
        return LocalBudget()
    raise ConfigError(
        f"shaping.shared = {shared!r}: no shared budget backend is available in this build"
    )
