"""Returned-message bytes -> per-recipient :class:`Failure` records.

Parses once into the stdlib's ``compat32`` Message objects with :mod:`smtpguard.classify.mime`
(a linear splitter, about three times faster than the stdlib feed parser on the corpus, same
objects), then tries the detectors of :mod:`smtpguard.classify.formats` in order; the first one
that claims the message wins - with a list, possibly empty: a detector that recognises a
message that is *not* a bounce (a challenge/response request) returns ``[]`` and ends the
search. Bounded and total: input is capped at :data:`MAX_BYTES`, each detector's exceptions
are contained, ordinary mail gives ``[]``.
"""

from __future__ import annotations

import logging

from smtpguard.classify import mime
from smtpguard.classify.formats import DETECTORS
from smtpguard.classify.verdict import Failure

log = logging.getLogger(__name__)

#: Bytes of a returned message that are parsed at all. A bounce's report is at the top;
#: anything past this is the returned original (or an attack).
MAX_BYTES = 512 * 1024
#: Multipart boundary declarations followed; deeper nesting is cut off (see _cap_parts).
#: Twice the levels the detectors read (formats._common.MAX_DEPTH); real bounces declare
#: at most five (the report, its alternatives, the returned original's own parts).
MAX_BOUNDARIES = 16
#: Lines starting with ``--`` (boundary delimiters, RFC 2046 §5.1.1) followed: four times
#: the parts the detectors read (formats._common.MAX_PARTS); real bounces have a dozen.
MAX_DELIMITERS = 256
#: Bytes of the top-level header section parsed; the rest of it (never the body) is dropped.
#: A bounce's headers are a few KiB; the stdlib parser costs ~3 us per header line.
MAX_HEADER_BYTES = 64 * 1024


def _nth(raw: bytes, needle: bytes, n: int) -> int:
    """Offset of the ``n``-th (1-based) occurrence of ``needle`` in ``raw``, -1 if fewer."""
    at = -1
    for _ in range(n):
        at = raw.find(needle, at + 1)
        if at < 0:
            return -1
    return at


def _cap_parts(raw: bytes) -> bytes:
    """Cut the input at the line holding its MAX_BOUNDARIES+1-th boundary declaration or its
    MAX_DELIMITERS+1-th delimiter line, before the stdlib parser sees it.

    The stdlib parser recurses (and compiles a regex) per nested multipart, and builds a
    Message object per part: a few thousand levels cost seconds and end in RecursionError,
    and 100,000 empty sibling parts in 512 KiB cost over half a second. The detectors read
    at most MAX_DEPTH levels and MAX_PARTS parts and the report is at the top, so the prefix
    keeps everything they read. ``bytes.count`` runs in C: ordinary input pays microseconds.
    """
    cut = len(raw)
    if raw.count(b"oundary=") > MAX_BOUNDARIES:
        cut = _nth(raw, b"oundary=", MAX_BOUNDARIES + 1)
    if raw.count(b"\n--", 0, cut) > MAX_DELIMITERS:
        cut = _nth(raw, b"\n--", MAX_DELIMITERS + 1) + 1
    if cut >= len(raw):
        return raw
    return raw[: raw.rfind(b"\n", 0, cut) + 1]


def _cap_headers(raw: bytes) -> bytes:
    """Keep the first MAX_HEADER_BYTES of an over-long header section, and the whole body.

    60,000 short header lines fit in MAX_BYTES and cost the stdlib parser ~0.2 s; the
    detectors read a dozen headers, all of which real MTAs put in the first few KiB.
    """
    if len(raw) <= MAX_HEADER_BYTES:
        return raw
    ends = [e for e in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if e >= 0]
    end = min(ends) if ends else len(raw)
    if end <= MAX_HEADER_BYTES:
        return raw
    keep = raw.rfind(b"\n", 0, MAX_HEADER_BYTES) + 1
    return raw[:keep] + raw[end + 1 :]


def extract(data: bytes | bytearray | memoryview | str) -> list[Failure]:
    """Every failed (or reported) recipient the bounce in ``data`` describes; [] if none."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, bytes | bytearray | memoryview):
        return []
    raw = _cap_parts(_cap_headers(bytes(data[:MAX_BYTES])))
    try:
        msg = mime.parse(raw)
    except Exception:  # the splitter is total; this is belt and braces
        log.debug("unparseable message", exc_info=True)
        return []
    for name, detector in DETECTORS:
        try:
            found = detector(msg, raw)
        except Exception:
            log.debug("detector %s failed", name, exc_info=True)
            continue
        if found is not None:
            return found
    return []
