"""Returned-message bytes -> per-recipient :class:`Failure` records.

Parses once with the stdlib ``email`` package (``compat32`` policy: about five times faster
than ``policy.default`` on the corpus and it never raises on malformed headers), then tries
the detectors of :mod:`smtpguard.classify.formats` in order; the first one that claims the
message wins. Bounded and total: input is capped at :data:`MAX_BYTES`, each detector's
exceptions are contained, ordinary mail gives ``[]``.
"""

from __future__ import annotations

import email
import email.policy
import logging

from smtpguard.classify.formats import DETECTORS
from smtpguard.classify.verdict import Failure

log = logging.getLogger(__name__)

#: Bytes of a returned message that are parsed at all. A bounce's report is at the top;
#: anything past this is the returned original (or an attack).
MAX_BYTES = 512 * 1024


def extract(data: bytes) -> list[Failure]:
    """Every failed (or reported) recipient the bounce in ``data`` describes; [] if none."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return []
    raw = bytes(data[:MAX_BYTES])
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # the stdlib parser is lenient; this is belt and braces
        log.debug("unparseable message", exc_info=True)
        return []
    for name, detector in DETECTORS:
        try:
            found = detector(msg, raw)
        except Exception:
            log.debug("detector %s failed", name, exc_info=True)
            continue
        if found:
            return found
    return []
