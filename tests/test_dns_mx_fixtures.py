"""The test doubles other tests lean on: the loopback DNS server and the scriptable MX."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.fixtures.dns import DnsStub
from tests.fixtures.mx import TestMx


def ask(stub: DnsStub, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", 2, stub.port)


def client(mx: TestMx) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", mx.port, local_hostname="client.test", timeout=5)
    smtp.ehlo()
    return smtp


# ---------------------------------------------------------------------- DNS


def test_dns_stub_serves_added_records(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    answer = ask(dns_server, "example.test", "MX")
    assert [r.to_text() for r in answer.answer[0]] == ["10 mx1.example.test."]
    assert dns_server.nameserver == f"127.0.0.1:{dns_server.port}"


def test_dns_stub_unknown_name_is_nxdomain_and_existing_name_nodata(dns_server: DnsStub) -> None:
    dns_server.add("mx1.example.test", "A", "127.0.0.1")
    assert ask(dns_server, "nowhere.test", "A").rcode() == dns.rcode.NXDOMAIN
    nodata = ask(dns_server, "mx1.example.test", "AAAA")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])


def test_dns_stub_truncates_big_udp_answers_and_serves_them_over_tcp(dns_server: DnsStub) -> None:
    dns_server.add("big.test", "TXT", *(f'"{"x" * 60} {i}"' for i in range(40)))
    assert ask(dns_server, "big.test", "TXT").flags & dns.flags.TC
    query = dns.message.make_query("big.test", "TXT")
    full = dns.query.tcp(query, "127.0.0.1", 2, dns_server.port)
    assert len(full.answer[0]) == 40


def test_dns_stub_logs_queries(dns_server: DnsStub) -> None:
    dns_server.servfail("broken.test")
    assert ask(dns_server, "Broken.Test", "MX").rcode() == dns.rcode.SERVFAIL
    assert dns_server.queried("broken.test", "MX") == 1


# ---------------------------------------------------------------------- MX


def test_test_mx_offers_the_esmtp_extensions_a_relay_needs(test_mx: TestMx) -> None:
    with client(test_mx) as smtp:
        for ext in ("pipelining", "8bitmime", "smtputf8", "dsn", "size", "enhancedstatuscodes"):
            assert smtp.has_extn(ext), ext


def test_test_mx_records_envelope_data_and_dsn_parameters(test_mx: TestMx) -> None:
    with client(test_mx) as smtp:
        smtp.sendmail(
            "alice@example.org",
            ["bob@example.test"],
            b"Subject: hi\r\n\r\nbody\r\n",
            mail_options=["RET=HDRS", "ENVID=Abc+2B1"],
            rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;Bob@Example.test"],
        )
    (msg,) = test_mx.wait_for(1)
    assert (msg.mail_from, msg.rcpt_tos, msg.helo) == (
        "alice@example.org",
        ["bob@example.test"],
        "client.test",
    )
    assert msg.data == b"Subject: hi\r\n\r\nbody\r\n"
    assert (msg.ret, msg.envid) == ("HDRS", "Abc+2B1")
    assert msg.notify("bob@example.test") == "FAILURE,DELAY"
    assert msg.orcpt("bob@example.test") == "rfc822;Bob@Example.test"


def test_test_mx_plays_scripted_replies_per_attempt_then_repeats_the_last(test_mx: TestMx) -> None:
    test_mx.script("bob@example.test", ["452 4.2.2 Mailbox full", "250 2.1.5 Ok"])
    codes = []
    with client(test_mx) as smtp:
        for _ in range(3):
            smtp.mail("alice@example.org")
            codes.append(smtp.rcpt("bob@example.test")[0])
            smtp.rset()
    assert codes == [452, 250, 250]
    assert test_mx.rcpt_attempts("bob@example.test") == 3


def test_test_mx_data_stage_rejection_is_not_recorded(test_mx: TestMx) -> None:
    test_mx.script("bob@example.test", "554 5.7.1 Message rejected as spam", stage="data")
    with client(test_mx) as smtp, pytest.raises(smtplib.SMTPDataError) as caught:
        smtp.sendmail("alice@example.org", ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    assert caught.value.smtp_code == 554
    assert (len(test_mx.messages), len(test_mx.rejected)) == (0, 1)


def test_test_mx_can_refuse_at_connect(test_mx: TestMx) -> None:
    test_mx.script("*", "421 4.7.0 Too many connections", stage="connect")
    with pytest.raises(smtplib.SMTPConnectError) as caught:
        smtplib.SMTP("127.0.0.1", test_mx.port, local_hostname="client.test", timeout=5)
    assert caught.value.smtp_code == 421


def test_test_mx_wait_for_names_what_arrived_on_timeout(test_mx: TestMx) -> None:
    with pytest.raises(AssertionError, match=r"got 0 message\(s\) within 0.1s, expected 1"):
        test_mx.wait_for(1, timeout=0.1)


def test_test_mx_starttls_with_a_fresh_self_signed_certificate(
    make_test_mx: Callable[..., TestMx],
) -> None:
    mx = make_test_mx(tls=True, hostname="mx.tls.test")
    context = ssl.create_default_context(cafile=str(mx.cert_path))
    with client(mx) as smtp:
        smtp.starttls(context=context)  # the certificate names the IP too
        smtp.sendmail("alice@example.org", ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    assert mx.wait_for(1)[0].tls is True
