"""Forward-only schema migrations; step N brings ``PRAGMA user_version`` to N.

Never edit a step that has shipped: add a new one. Each step is a list of SQL
statements run in one transaction.

Step 1: suppression list and its history (foundation).
Step 2: the relay's queue (messages, per-recipient delivery state) and events.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: suppression list + history  (owned by smtpguard/store/suppression.py)
    [],
    # 2: queue + events  (owned by smtpguard/store/queue.py)
    [],
]
