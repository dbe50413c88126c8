"""The DSN builder (RFC 3464 / RFC 6522 / RFC 3461) and when a DSN is wanted at all."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.classify.message import extract
from smtpguard.relay.dsn import DsnRecipient, build_dsn, dsn_wanted, returned_bytes_needed

ORIGINAL = (
    b"Received: from client.example.org by smtpguard.test\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <q3@example.org>\r\n"
    b"\r\n"
    b"The body, which headers-only DSNs leave out.\r\n"
)
ARRIVED = 1_795_000_000.0
NOW = 1_795_003_600.0


def failed(address: str = "bob@example.test", **kw: Any) -> DsnRecipient:
    fields: dict[str, Any] = {
        "address": address,
        "orcpt": "",
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": f"smtp; 550 5.1.1 <{address}>: Recipient address rejected: User unknown",
        "remote_mta": "mx1.example.test",
        "last_attempt": NOW - 60,
    }
    fields.update(kw)
    return DsnRecipient(**fields)


def dsn(*recipients: DsnRecipient, **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "original": ORIGINAL,
        "mail_from": "alice@example.org",
        "envid": "",
        "ret": "",
        "recipients": recipients or (failed(),),
        "reporting_mta": "smtpguard.test",
        "arrival_date": ARRIVED,
        "now": NOW,
    }
    args.update(kw)
    return build_dsn(**args)


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def status_blocks(data: bytes) -> list[email.message.Message]:
    part = parse(data).get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    return list(part.get_payload())


# ---------------------------------------------------------------------- structure


def test_dsn_is_a_multipart_report_of_text_status_and_returned_headers() -> None:
    msg = parse(dsn())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_dsn_comes_from_mailer_daemon_to_the_sender_marked_auto_replied() -> None:
    msg = parse(dsn())
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@smtpguard.test"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Message-ID"].endswith("@smtpguard.test>")
    assert msg["Date"].datetime.timestamp() == NOW


def test_per_message_fields_name_the_reporting_mta_and_arrival() -> None:
    head = status_blocks(dsn())[0]
    assert head["Reporting-MTA"] == "dns; smtpguard.test"
    assert email.utils.parsedate_to_datetime(head["Arrival-Date"]).timestamp() == ARRIVED
    assert head["Original-Envelope-Id"] is None


def test_envid_comes_back_as_original_envelope_id_with_its_case() -> None:
    assert status_blocks(dsn(envid="Q3-Report+7"))[0]["Original-Envelope-Id"] == "Q3-Report+7"


def test_per_recipient_fields_follow_rfc_3464() -> None:
    block = status_blocks(dsn())[1]
    assert block["Final-Recipient"] == "rfc822; bob@example.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx1.example.test"
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown"
    )
    assert email.utils.parsedate_to_datetime(block["Last-Attempt-Date"]).timestamp() == NOW - 60
    assert block["Original-Recipient"] is None


def test_orcpt_comes_back_as_original_recipient() -> None:
    block = status_blocks(dsn(failed(orcpt="rfc822;Bob@Example.TEST")))[1]
    assert block["Original-Recipient"] == "rfc822; Bob@Example.TEST"


def test_one_status_block_per_recipient() -> None:
    blocks = status_blocks(dsn(failed("a@example.test"), failed("b@example.test")))
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; a@example.test",
        "rfc822; b@example.test",
    ]


def test_diagnostic_without_type_is_marked_smtp() -> None:
    block = status_blocks(dsn(failed(diagnostic="550 5.1.1 no such user")))[1]
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"


@pytest.mark.parametrize(
    ("actions", "subject"),
    [
        (("failed",), "Undelivered Mail Returned to Sender"),
        (("failed", "delayed"), "Delivery Status Notification (Failure)"),
        (("delayed",), "Delayed Mail (still being retried)"),
        (("delivered",), "Successful Mail Delivery Report"),
    ],
)
def test_subject_says_what_happened(actions: tuple[str, ...], subject: str) -> None:
    recipients = [failed(f"r{i}@example.test", action=a) for i, a in enumerate(actions)]
    assert parse(dsn(*recipients))["Subject"] == subject


def test_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        dsn(failed(action="bounced"))


# ---------------------------------------------------------------------- RET


def test_default_returns_headers_only() -> None:
    data = dsn()
    part = parse(data).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly report" in part.get_content()
    assert b"The body" not in data


def test_ret_hdrs_returns_headers_only() -> None:
    assert b"The body" not in dsn(ret="HDRS")


def test_ret_full_returns_the_whole_message() -> None:
    part = parse(dsn(ret="FULL")).get_payload()[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_payload()[0]
    assert inner["Message-ID"] == "<q3@example.org>"
    assert "The body" in inner.get_content()


# ---------------------------------------------------------------------- safety


def test_no_bare_cr_or_lf_even_when_the_original_has_them() -> None:
    original = b"Subject: a\rb\nX-Bare: lf\n\nbody\rwith bare CR\nand LF\r\n"
    for ret in ("HDRS", "FULL"):
        data = dsn(original=original, ret=ret)
        assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None


def test_newlines_in_values_cannot_inject_headers_or_fields() -> None:
    data = dsn(
        failed(
            diagnostic="smtp; 550 no\r\nX-Injected: 1",
            remote_mta="mx.test\r\nX-Injected: 2",
        ),
        envid="id\r\nX-Injected: 3",
        mail_from="alice@example.org\r\nBcc: victim@example.net",
        reporting_mta="smtpguard.test\nX-Injected: 4",
    )
    assert re.search(rb"^(X-Injected|Bcc):", data, re.MULTILINE | re.IGNORECASE) is None
    block = status_blocks(data)[1]
    assert block["Diagnostic-Code"] == "smtp; 550 no X-Injected: 1"


def test_utf8_sender_gets_a_utf8_dsn() -> None:
    data = dsn(mail_from="jürgen@example.org")
    assert "To: <jürgen@example.org>\r\n".encode() in data  # RFC 6532, not RFC 2047


# ---------------------------------------------------------------------- read back


def test_stdlib_parser_reads_the_report_fields_back() -> None:
    data = dsn(failed(orcpt="rfc822;bob@example.test"), envid="E1", ret="FULL")
    assert parse(data).defects == []
    head, block = status_blocks(data)
    assert head["Original-Envelope-Id"] == "E1"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")


def test_smtpguard_classifier_reads_the_dsn_back() -> None:
    recipients = (
        failed("bob@example.test"),
        failed(
            "carol@example.test",
            action="delayed",
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
        ),
    )
    found = extract(dsn(*recipients))
    assert [(f.recipient, f.action, f.status, f.reply_code) for f in found] == [
        ("bob@example.test", "failed", "5.1.1", "550"),
        ("carol@example.test", "delayed", "4.2.2", "452"),
    ]
    assert found[0].remote_host == "mx1.example.test"
    assert found[0].message_id == "<q3@example.org>"


# ---------------------------------------------------------------------- dsn_wanted


@pytest.mark.parametrize(
    ("mail_from", "auto_submitted", "notify", "action", "wanted"),
    [
        ("alice@example.org", False, (), "failed", True),  # default: failures only
        ("alice@example.org", False, (), "delayed", False),
        ("alice@example.org", False, (), "delivered", False),
        ("", False, (), "failed", False),  # null sender: never (RFC 5321 6.1)
        ("alice@example.org", True, ("FAILURE",), "failed", False),  # Auto-Submitted: never
        ("alice@example.org", False, ("NEVER",), "failed", False),
        ("alice@example.org", False, ("SUCCESS",), "failed", False),  # RFC 3461 4.1
        ("alice@example.org", False, ("SUCCESS", "DELAY"), "delayed", True),
        ("alice@example.org", False, ("FAILURE",), "failed", True),
        ("alice@example.org", False, ("SUCCESS",), "delivered", True),
        ("alice@example.org", False, ("success",), "relayed", True),
    ],
)
def test_dsn_wanted(
    mail_from: str, auto_submitted: bool, notify: tuple[str, ...], action: str, wanted: bool
) -> None:
    got = dsn_wanted(
        mail_from=mail_from, auto_submitted=auto_submitted, notify=notify, action=action
    )
    assert got is wanted


_ANY_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from('\r\n\t\x00\x0b\x0c\x85\u2028;:<>"\\ ='), st.characters(codec="utf-8")
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(diagnostic=_ANY_TEXT, remote=_ANY_TEXT, envid=_ANY_TEXT, orcpt=_ANY_TEXT, sender=_ANY_TEXT)
def test_any_value_stays_inside_its_own_field(
    diagnostic: str, remote: str, envid: str, orcpt: str, sender: str
) -> None:
    data = dsn(
        failed(diagnostic=diagnostic, remote_mta=remote, orcpt=orcpt),
        envid=envid,
        mail_from=sender + "@example.org",
    )
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    msg = parse(data)
    assert list(msg.keys()) == [
        "From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version",
        "Content-Type",
    ]  # fmt: skip
    head, block = status_blocks(data)
    assert set(head.keys()) <= {"Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"}
    assert set(block.keys()) <= {
        "Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-MTA",
        "Diagnostic-Code", "Last-Attempt-Date",
    }  # fmt: skip
    assert block["Action"] == "failed"


def test_utf8_recipient_is_reported_in_a_global_delivery_status() -> None:
    data = dsn(failed("jürgen@example.test"), mail_from="alice@example.org")
    msg = parse(data)
    kinds = [part.get_content_type() for part in msg.iter_parts()]
    assert kinds[1] == "message/global-delivery-status"  # RFC 6533 section 6
    assert "Final-Recipient: utf-8; jürgen@example.test\r\n".encode() in data
    assert b"?" not in data.split(b"Final-Recipient:")[1].split(b"\r\n")[0]


def test_global_delivery_status_reads_back_through_the_classifier() -> None:
    verdicts = [f for f in extract(dsn(failed("jürgen@example.test")))]
    assert [(f.recipient, f.status) for f in verdicts] == [("jürgen@example.test", "5.1.1")]


# ---------------------------------------------------------------------- bounded returns


def nested_message(depth: int) -> bytes:
    """A message whose MIME parts nest ``depth`` levels deep (each level ~70 bytes)."""
    out = [b"From: alice@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    out.append(b"Content-Type: text/plain\r\n\r\nthe bottom\r\n")
    out += [b"--b%d--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


def many_parts(parts: int, part_size: int = 136) -> bytes:
    """A multipart message of ``parts`` small text parts (13.6 MB for 100,000)."""
    head = (
        b"From: alice@example.org\r\nTo: bob@example.test\r\nSubject: many\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n'
    )
    part = b"--p\r\nContent-Type: text/plain\r\n\r\n"
    part += b"x" * (part_size - len(part) - 2) + b"\r\n"
    return head + part * parts + b"--p--\r\n"


def returned_part(data: bytes) -> bytes:
    """The third part of a DSN as bytes (its MIME header lines and content)."""
    boundary = re.search(rb'boundary="([^"]+)"', data).group(1)  # type: ignore[union-attr]
    parts = data.split(b"\r\n--" + boundary)
    assert parts[-1] == b"--\r\n" and len(parts) == 5, "preamble, three parts, the end"
    return parts[3].removeprefix(b"\r\n")


def test_ret_full_within_the_limit_returns_the_original_byte_for_byte() -> None:
    part = returned_part(dsn(ret="FULL"))
    assert part.startswith(b"Content-Type: message/rfc822\r\n")
    assert part.endswith(b"\r\n\r\n" + ORIGINAL)


def test_ret_full_over_the_limit_returns_the_header_section_and_says_so() -> None:
    original = ORIGINAL + b"x" * 60_000 + b"\r\n"
    data = dsn(original=original, ret="FULL")
    part = returned_part(data)
    assert part.startswith(b"Content-Type: text/rfc822-headers; charset=us-ascii\r\n")
    assert part.endswith(b"\r\n\r\n" + ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n")
    assert len(data) < 5_000
    text = parse(data).get_payload()[0].get_content()
    assert f"The message was {len(original)} bytes, more than the 50000 returned whole" in text


def test_the_return_limit_is_the_callers() -> None:
    assert b"The body" not in dsn(ret="FULL", return_limit=len(ORIGINAL) - 1)
    assert b"The body" in dsn(ret="FULL", return_limit=len(ORIGINAL))


def test_a_header_section_over_64_kib_is_cut_at_a_field_boundary() -> None:
    fields = b"".join(b"X-Filler-%05d: %s\r\n\tfolded\r\n" % (i, b"y" * 60) for i in range(2000))
    original = b"Subject: long\r\n" + fields + b"\r\nbody\r\n"
    data = dsn(original=original, ret="HDRS")
    content = returned_part(data).split(b"\r\n\r\n", 1)[1]
    assert len(content) <= 64 * 1024
    assert content.endswith(b"\tfolded\r\n")  # the last field is whole, folding included
    assert original.startswith(content)
    assert "longer than 65536 bytes" in parse(data).get_payload()[0].get_content()


def test_a_message_nested_400_levels_deep_is_returned_whole_without_parsing_it() -> None:
    original = nested_message(450)
    assert len(original) < 50_000
    started = time.perf_counter()
    data = dsn(original=original, ret="FULL")
    assert time.perf_counter() - started < 0.5
    assert returned_part(data).endswith(b"\r\n\r\n" + original)


def test_a_13_mb_message_of_100000_parts_costs_only_its_header_section() -> None:
    original = many_parts(100_000)
    assert len(original) >= 13_600_000
    head = original[: returned_bytes_needed("FULL", len(original))]
    started = time.perf_counter()
    from_head = dsn(original=head, original_size=len(original), ret="FULL")
    from_whole = dsn(original=original, ret="FULL")
    assert time.perf_counter() - started < 0.5
    assert len(head) <= 64 * 1024 + 4
    assert returned_part(from_head) == returned_part(from_whole)
    assert b"Content-Type: text/rfc822-headers" in returned_part(from_head)
    assert len(from_whole) < 5_000


def test_an_original_that_could_not_be_read_is_said_so_and_left_out() -> None:
    data = dsn(original=None)
    msg = parse(data)
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain",
        "message/delivery-status",
    ]
    assert "could not be read" in msg.get_payload()[0].get_content()


def test_a_header_only_message_is_returned_as_its_headers() -> None:
    part = returned_part(dsn(original=b"Subject: only headers\r\n", ret="HDRS"))
    assert part.endswith(b"\r\n\r\nSubject: only headers\r\n")
