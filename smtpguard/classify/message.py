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
#: Multipart boundary declarations followed; deeper nesting is cut off (see _cap_nesting).
MAX_BOUNDARIES = 64


def _cap_nesting(raw: bytes) -> bytes:
    """Cut the input before its MAX_BOUNDARIES-th multipart boundary declaration.

    The stdlib parser recurses (and compiles a regex) per nested multipart; a few thousand
    levels cost seconds and end in RecursionError. No real bounce nests that deep, and
    the report is at the top, so the prefix keeps everything a detector reads.
    """
    if raw.count(b"oundary=") <= MAX_BOUNDARIES:
        return raw
    at = -1
    for _ in range(MAX_BOUNDARIES + 1):
        at = raw.find(b"oundary=", at + 1)
        if at < 0:
            return raw
    return raw[: raw.rfind(b"\n", 0, at) + 1]


def extract(data: bytes | bytearray | memoryview | str) -> list[Failure]:
    """Every failed (or reported) recipient the bounce in ``data`` describes; [] if none."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, bytes | bytearray | memoryview):
        return []
    raw = _cap_nesting(bytes(data[:MAX_BYTES]))
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
