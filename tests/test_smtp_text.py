"""SMTP text shared by both sides of the relay: status grammar, xtext, DATA framing."""

from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.smtp import xtext
from smtpguard.smtp.data import DataReceiver, normalise_line_endings, unstuff, wire_data
from smtpguard.smtp.status import is_reply_with_status, is_status, leading_status


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: bytes(b"a.\r\nM"[x % 5] for x in b)))
def test_data_payload_matches_what_aiosmtplib_would_send(body: bytes) -> None:
    """Property: our DATA payload is byte for byte aiosmtplib's (CRLF, dot-stuffed, final dot)."""
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(body)) + b".\r\n"
    assert wire_data(body) == expected


def test_crlf_body_is_sent_without_rewriting_line_endings() -> None:
    assert wire_data(b"a\r\n.b\r\n..\r\n") == b"a\r\n..b\r\n...\r\n.\r\n"
    assert wire_data(b".x") == b"..x\r\n.\r\n"
    assert wire_data(b"") == b"\r\n.\r\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80).map(lambda b: bytes(b"a.\r\nM"[x % 5] for x in b)))
def test_what_is_sent_unstuffs_to_what_was_queued(body: bytes) -> None:
    """Property: the inbound side reads back exactly what the delivery side sends."""
    sent = wire_data(body)
    assert unstuff(sent[: -len(b".\r\n")]) == normalise_line_endings(body) + (
        b"" if normalise_line_endings(body).endswith(b"\r\n") else b"\r\n"
    )


@given(st.text(max_size=40))
def test_xtext_round_trips_any_text(value: str) -> None:
    encoded = xtext.encode(value)
    assert encoded.isascii() and "=" not in encoded and " " not in encoded
    assert xtext.decode(encoded).encode("latin-1") == value.encode("utf-8")


@pytest.mark.parametrize("bad", ["a+2", "a+zz", "a b", "a=b"])
def test_malformed_xtext_is_refused(bad: str) -> None:
    with pytest.raises(xtext.XtextError):
        xtext.decode(bad)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("5.1.1", True), ("2.0.0", True), ("4.7.10", True), ("5.1", False), ("6.0.0", False),
     ("5.1.1.1", False), (" 5.1.1", False)],
)  # fmt: skip
def test_enhanced_status_grammar(text: str, ok: bool) -> None:
    assert is_status(text) is ok


def test_leading_status_must_be_a_word_of_its_own() -> None:
    assert leading_status("2.0.0 Ok: queued") == "2.0.0"
    assert leading_status("550 5.1.1 User unknown", 4) == "5.1.1"
    assert leading_status("2.0.0.1 x") == ""
    assert leading_status("Ok") == ""


def test_reply_with_status() -> None:
    assert is_reply_with_status("550 5.1.1")
    assert not is_reply_with_status("550 5.1")
    assert not is_reply_with_status("5.1.1 550")


def _received_whole(raw: bytes) -> bytes:
    return normalise_line_endings(unstuff(raw))


def _fed_in_pieces(receiver: DataReceiver, raw: bytes, cuts: list[int]) -> DataReceiver:
    """``raw`` fed to ``receiver`` cut at the offsets ``cuts``."""
    last = 0
    for cut in sorted(c for c in cuts if c <= len(raw)):
        receiver.feed(raw[last:cut])
        last = cut
    receiver.feed(raw[last:])
    return receiver


@settings(max_examples=400)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".."]), max_size=40),
    st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_data_received_in_any_chunks_is_stored_as_if_received_whole(
    pieces: list[bytes], cuts: list[int]
) -> None:
    raw = b"".join(pieces) + b"\r\n"  # data ends with the CRLF of its end sequence
    receiver = _fed_in_pieces(DataReceiver(max_line=1000), raw, cuts)
    assert bytes(receiver.finish()) == _received_whole(raw)


@given(
    st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), max_size=5),
    st.sampled_from([b"x", b"\n", b"\r"]),
)
def test_a_line_is_too_long_exactly_when_it_has_more_octets_than_the_limit(
    lengths: list[int], cuts: list[int], filler: bytes
) -> None:
    raw = b"".join(filler * n + b"\r\n" for n in lengths)
    receiver = _fed_in_pieces(DataReceiver(max_line=20), raw, cuts)
    longest = max(len(line) for line in raw.split(b"\r\n"))
    assert receiver.line_too_long == (longest > 20)
