"""Bounded time on hostile input: no input shape makes the classifier backtrack.

Hypothesis builds messages and replies out of the fragments that make line- and
regex-based bounce parsers blow up (runs of dashes, blank lines after a transcript command,
whitespace, address and bracket noise, reply codes, boundary lines, header folding) and
every one must be classified in under 50 ms. The two shapes that once took seconds (blank
lines after an "In: RCPT TO" line; lines of thousands of dashes) are pinned as examples.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpguard.classify import default_classifier

LIMIT = 0.050  # seconds per message
HOSTILE = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)  # fmt: skip

FRAGMENTS = [
    "\n", "\r\n", " ", "\t", "-", "=", "*", "_", "<", ">", "(", ")", "[", "]", ":", ";", ".",
    "@", "a@b.example", "<a@b.example>:", "<a@b.example>...", "550 ", "550-", "5.1.1 ",
    "550-5.1.1 ", "In: RCPT TO:<a@b.example>", "Out: 550 5.1.1 no", ">>> RCPT To:<a@b.example>",
    "<<< 550 5.1.1 User unknown", "RCPT TO", "DATA", "(expanded from: <", "Original message",
    "Final-Recipient: rfc822; a@b.example", "Diagnostic-Code: smtp; 550 ", "Status: 5.1.1",
    "--B", "--B--", "Content-Type: multipart/mixed; boundary=B", "user unknown", "x", "9",
    "host mx.b.example[192.0.2.1] said:", "said: ", "ERROR_CODE :550", "\u00e9", "\u3042",
]  # fmt: skip

runs = st.lists(
    st.tuples(st.sampled_from(FRAGMENTS), st.integers(min_value=1, max_value=3000)),
    min_size=1,
    max_size=12,
)


def _body(parts: list[tuple[str, int]]) -> str:
    return "".join(frag * count for frag, count in parts)[: 256 * 1024]


HEAD = (
    "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\nTo: s@example.com\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
)


def _timed(fn, arg) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def _fast(fn, arg) -> None:  # type: ignore[no-untyped-def]
    # The machine is shared: a slow first run is retried once before it counts.
    elapsed = _timed(fn, arg)
    if elapsed >= LIMIT:
        elapsed = min(elapsed, _timed(fn, arg))
    assert elapsed < LIMIT, f"{elapsed * 1000:.1f} ms"


@HOSTILE
@given(runs)
@example([("In: RCPT TO:<a@b.example>", 1), ("\n", 4000)])
@example([("<a@b.example>:\n", 1), ("-" * 4000 + "\n", 3)])
@example([("-", 3000), ("\n", 1), ("=", 3000), (" original\n", 1)])
def test_plain_text_bounce_is_classified_in_bounded_time(parts: list[tuple[str, int]]) -> None:
    raw = (HEAD + "\r\n" + _body(parts)).encode("utf-8", "surrogateescape")
    _fast(default_classifier().message, raw)


@HOSTILE
@given(runs)
def test_dsn_with_hostile_parts_is_classified_in_bounded_time(parts: list[tuple[str, int]]) -> None:
    body = _body(parts)
    raw = (
        HEAD + "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        ' boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n'
        + body
        + "\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        "Final-Recipient: rfc822; a@b.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; " + body[:2000] + "\r\n--B--\r\n"
    ).encode("utf-8", "surrogateescape")
    _fast(default_classifier().message, raw)


@HOSTILE
@given(runs)
def test_inline_reply_is_classified_in_bounded_time(parts: list[tuple[str, int]]) -> None:
    _fast(default_classifier().reply_line, "550 " + _body(parts))
