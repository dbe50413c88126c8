"""Bounce format detectors, tried in :data:`DETECTORS` order; the first confident hit wins.

Each module has ``detect(msg, raw) -> list[Failure] | None`` (None = "not my format").
Order matters: structured formats first (an RFC 3464 DSN or an ARF report says exactly
what failed), then vendor wordings that are unambiguous, then auto-replies (a bounce often
carries ``Auto-Submitted: auto-replied`` too, RFC 3834 §5), and the generic plain-text
reader last. Unlike flufl.bounce, results are never unioned across detectors. A detector
returns None for "not my format" and a list otherwise - an empty list claims the message as
*not a bounce* (a challenge/response request) and ends the search.
"""

from __future__ import annotations

from collections.abc import Callable
from email.message import Message

from smtpguard.classify.formats import (
    amazonses,
    arf,
    autoreply,
    challenge,
    googlegroups,
    mailinglist,
    plaintext,
    rfc3464,
)
from smtpguard.classify.verdict import Failure

Detector = Callable[[Message, bytes], "list[Failure] | None"]

#: (name, detector) in the order they are tried.
DETECTORS: list[tuple[str, Detector]] = [
    ("arf", arf.detect),
    ("rfc3464", rfc3464.detect),
    ("amazonses", amazonses.detect),
    ("googlegroups", googlegroups.detect),
    ("mailinglist", mailinglist.detect),
    ("challenge", challenge.detect),
    ("autoreply", autoreply.detect),
    ("plaintext", plaintext.detect),
]

__all__ = ["DETECTORS", "Detector"]
