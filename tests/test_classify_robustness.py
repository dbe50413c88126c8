"""The classifier is fed by strangers: it never raises and always finishes in bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.classify import Classifier, Failure, Verdict, default_classifier
from smtpguard.classify.decide import decide
from smtpguard.classify.reply import parse_reply

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MB = 1024 * 1024


def one_second(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    return result


# ------------------------------------------------------------------ property tests


@FAST
@given(st.binary(max_size=4096))
def test_message_never_raises_on_random_bytes(data: bytes) -> None:
    out = default_classifier().message(data)
    assert isinstance(out, list)
    assert all(isinstance(v, Verdict) for v in out)


@FAST
@given(st.text(max_size=2048))
def test_reply_line_never_raises_on_random_text(text: str) -> None:
    v = default_classifier().reply_line(text)
    assert v.bounce in ("hard", "soft", "none")


@FAST
@given(st.integers(min_value=-1000, max_value=100_000) | st.text(max_size=8), st.text(max_size=512))
def test_reply_never_raises_on_odd_codes(code: int | str, text: str) -> None:
    v = default_classifier().reply(code, text)
    assert v.reason


@FAST
@given(
    st.builds(
        Failure,
        recipient=st.text(max_size=64),
        status=st.text(max_size=12),
        reply_code=st.text(max_size=5),
        diagnostic=st.text(max_size=1024),
        action=st.text(max_size=12),
        stage=st.sampled_from(["rcpt", "data", "mail", "bogus", ""]),
        reason_hint=st.text(max_size=12) | st.sampled_from(["feedback", "vacation", "expired"]),
    )
)
def test_decide_never_raises_on_odd_failures(failure: Failure) -> None:
    v = decide(failure, default_classifier().rules)
    assert not (v.suppress and v.bounce != "hard")


def test_decide_tolerates_fields_that_are_not_strings() -> None:
    f = Failure(recipient="a@b.example", reply_code=550, status=None, diagnostic=None)  # type: ignore[arg-type]
    v = decide(f, default_classifier().rules)
    assert (v.reply_code, v.bounce) == ("550", "hard")


@FAST
@given(st.text(max_size=600))
def test_parse_reply_returns_three_strings(text: str) -> None:
    code, status, rest = parse_reply(text)
    assert isinstance(code, str) and isinstance(status, str) and isinstance(rest, str)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_truncated_corpus_bounces_never_raise(corpus: Path, data: st.DataObject) -> None:
    files = sorted(corpus.glob("*.eml"))
    raw = data.draw(st.sampled_from(files)).read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    assert isinstance(default_classifier().message(raw[:cut]), list)


# ------------------------------------------------------------------ hostile shapes


def _mime_nested(depth: int) -> bytes:
    head = (
        b"From: MAILER-DAEMON@a.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"MIME-Version: 1.0\r\n"
    )
    body = b""
    for i in range(depth):
        body += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    body += b"Content-Type: text/plain\r\n\r\n550 5.1.1 <x@b.example>: User unknown\r\n"
    return head + body


def test_deeply_nested_mime_finishes_quickly() -> None:
    assert isinstance(one_second(default_classifier().message, _mime_nested(2000)), list)


def test_broken_charsets_do_not_raise() -> None:
    msg = (
        b"From: MAILER-DAEMON@a.example\r\nSubject: =?x-no-such-charset?B?////?=\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
        b"\xff\xfe\x80 broken\r\n"
        b"--zz\r\nContent-Type: message/delivery-status; charset=utf-7\r\n\r\n"
        b"Reporting-MTA: dns; a.example\r\n\r\nFinal-Recipient: rfc822; \xc3\x28@b.example\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 \xe9\xff User unknown\r\n--zz--\r\n"
    )
    out = default_classifier().message(msg)
    assert isinstance(out, list)


def test_huge_header_is_classified_within_a_second() -> None:
    msg = b"From: a@b.example\r\nX-Huge: " + b"a" * (4 * MB) + b"\r\nSubject: hi\r\n\r\nhello\r\n"
    assert isinstance(one_second(default_classifier().message, msg), list)


def test_megabyte_of_random_looking_bytes_finishes_quickly() -> None:
    blob = bytes(range(256)) * (MB // 256)
    assert isinstance(one_second(default_classifier().message, blob), list)


@pytest.mark.parametrize(
    "line",
    [
        "550 " + "a" * MB,
        "550 5.1.1 " + "user " * (MB // 5),
        "550 " + "550-5.1.1 " * (MB // 10),
        "550 " + "@" * MB + ">: user unknown",
        "550 " + "x@" * (MB // 2),
        "451 4.7.1 greylisted try again in " + "9" * MB,
        "550-" + "\r\n550-".join(["5.1.1 no such user"] * 50_000),
    ],
    ids=["letters", "words", "continuations", "at-signs", "addresses", "digits", "many-lines"],
)
def test_one_megabyte_adversarial_reply_is_classified_in_under_a_second(line: str) -> None:
    clf = Classifier.load()
    v = one_second(clf.reply_line, line)
    assert v.bounce in ("hard", "soft")


def test_one_megabyte_adversarial_diagnostic_in_a_failure_is_decided_in_under_a_second() -> None:
    f = Failure(
        recipient="a@b.example", diagnostic="5.1.1 " + "(" * MB + "user unknown", stage="rcpt"
    )
    v = one_second(decide, f, default_classifier().rules)
    assert len(v.diagnostic) <= 1000


def test_one_megabyte_line_in_a_bounce_message_is_classified_in_under_a_second() -> None:
    msg = (
        b"From: MAILER-DAEMON@a.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"Content-Type: text/plain\r\n\r\n<x@b.example>: host mx.b.example said: 550 5.1.1 "
        + b"a@" * (MB // 2)
        + b"\r\n"
    )
    assert isinstance(one_second(default_classifier().message, msg), list)


def test_message_counts_inputs_that_are_not_bounces() -> None:
    clf = Classifier.load()
    assert clf.message(b"From: a@b.example\r\nSubject: hello\r\n\r\nJust saying hi.\r\n") == []
    assert clf.stats["messages"] == 1
    assert clf.stats["not_bounce"] == 1


_BOUNCE_HEAD = (
    b"From: MAILER-DAEMON@a.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
    b"MIME-Version: 1.0\r\n"
)


def test_hundred_thousand_sibling_parts_finish_quickly() -> None:
    msg = (
        _BOUNCE_HEAD
        + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        + b"--b\r\n\r\n" * 100_000
    )
    assert isinstance(one_second(default_classifier().message, msg), list)


def test_sixty_thousand_header_lines_finish_quickly() -> None:
    msg = _BOUNCE_HEAD + b"X-A: b\r\n" * 60_000 + b"\r\nhello\r\n"
    assert isinstance(one_second(default_classifier().message, msg), list)


def test_report_at_the_top_is_still_read_when_junk_parts_follow() -> None:
    report = (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; a.example\r\n\r\nFinal-Recipient: rfc822; x@b.example\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <x@b.example>: User unknown\r\n"
        b"--r\r\nContent-Type: multipart/mixed; boundary=j\r\n\r\n"
    )
    junk = b"--j\r\nContent-Type: multipart/mixed; boundary=k\r\n\r\n--k\r\n\r\n" * 5_000
    (v,) = one_second(default_classifier().message, _BOUNCE_HEAD + report + junk)
    assert (v.recipient, v.reason, v.suppress) == ("x@b.example", "userunknown", True)
