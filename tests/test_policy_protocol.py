"""Postfix's policy delegation wire format: requests parsed, replies encoded (pure)."""

from __future__ import annotations

import pytest

from smtpguard.postfix.policy_protocol import RequestError, encode_reply, parse_request

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nhelo_name=mx.example.org\nsender=alice@example.org\n"
    b"recipient=bob@example.com\nccert_subject=\nsasl_username="
)


def test_attributes_of_a_postfix_request() -> None:
    attrs = parse_request(REQUEST)
    assert attrs["recipient"] == "bob@example.com"
    assert attrs["protocol_state"] == "RCPT"
    assert attrs["sasl_username"] == ""


def test_a_value_may_contain_equals_signs() -> None:
    attrs = parse_request(b"request=smtpd_access_policy\nsender=a=b@example.org")
    assert attrs["sender"] == "a=b@example.org"


def test_undecodable_bytes_in_a_value_are_replaced_not_fatal() -> None:
    attrs = parse_request(b"request=smtpd_access_policy\nrecipient=b\xffob@example.com")
    assert attrs["recipient"] == "b\ufffdob@example.com"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"request=smtpd_access_policy\ngarbage", "line 2: not name=value"),
        (b"request=smtpd_access_policy\nBad Name=x", "line 2: bad attribute name"),
        (b"protocol_state=RCPT\nrecipient=bob@example.com", "expected smtpd_access_policy"),
        (b"request=something_else", "request='something_else'"),
        (b"", "line 1: not name=value"),
    ],
)
def test_malformed_requests_are_refused_with_the_reason(block: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(block)


def test_reply_is_one_action_line_and_an_empty_line() -> None:
    assert encode_reply("DUNNO") == b"action=DUNNO\n\n"


def test_reply_cannot_be_split_by_control_characters() -> None:
    assert encode_reply("550 5.1.1 a\nb\rc") == b"action=550 5.1.1 a?b?c\n\n"
