"""``doctor`` checks against a real DNS server on loopback serving good and broken zones."""

from __future__ import annotations

import pytest

from smtpguard.ops.dkim import check_dkim
from smtpguard.ops.dmarc import check_dmarc
from smtpguard.ops.dnsbl import check_dnsbl, reversed_ip
from smtpguard.ops.dnsquery import Lookup, ResolverError
from smtpguard.ops.doctor import DoctorRequest, run
from smtpguard.ops.findings import Finding
from smtpguard.ops.mx import check_mx
from smtpguard.ops.ptr import check_ptr
from smtpguard.ops.spf import check_spf
from tests.fixtures.dns import DoctorZones

Z = DoctorZones


@pytest.fixture
def lookup(doctor_dns: DoctorZones) -> Lookup:
    return Lookup([doctor_dns.stub.nameserver], timeout=2.0)


def only(findings: list[Finding], check: str) -> Finding:
    matching = [f for f in findings if f.check == check]
    assert len(matching) == 1, findings
    return matching[0]


def statuses(findings: list[Finding]) -> set[str]:
    return {f.status for f in findings}


# --------------------------------------------------------------------------- whole run


def test_good_domain_passes_every_check(lookup: Lookup) -> None:
    request = DoctorRequest.make("good.test", Z.GOOD_IP, ["s2048"], [Z.BLOCKLIST])
    report = run(lookup, request)
    assert report.worst == "PASS", [f for f in report.findings if f.status != "PASS"]
    assert report.exit_code == 0
    checks = {f.check for f in report.findings}
    assert {"mx", "spf", "spf.lookups", "spf.all", "spf.ip", "dkim:s2048", "dmarc"} <= checks
    assert {"ptr", "dnsbl"} <= checks


def test_checks_needing_an_ip_or_selector_are_reported_skipped(lookup: Lookup) -> None:
    report = run(lookup, DoctorRequest.make("good.test"))
    assert any(s.startswith("dkim") for s in report.skipped)
    assert any("ptr" in s for s in report.skipped)
    assert not any(f.check in ("ptr", "spf.ip") for f in report.findings)


def test_dead_resolver_raises_resolver_error() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        lookup = Lookup([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.5)
        with pytest.raises(ResolverError, match="did not answer"):
            run(lookup, DoctorRequest.make("good.test"))


# --------------------------------------------------------------------------- MX


def test_mx_resolvable_hosts_pass(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "good.test"), "mx")
    assert f.status == "PASS"
    assert "mail.good.test" in f.summary and Z.GOOD_IP in f.summary


def test_missing_mx_and_address_fails(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "nomx.test"), "mx")
    assert f.status == "FAIL"
    assert "no MX record and no address" in f.summary
    assert f.fix


def test_missing_mx_with_an_address_warns_implicit_mx(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "implicit.test"), "mx")
    assert f.status == "WARN"
    assert "implicit MX" in f.summary


def test_null_mx_fails(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "nullmx.test"), "mx")
    assert f.status == "FAIL"
    assert "null MX" in f.summary


def test_mx_host_without_address_fails(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "badmx.test"), "mx")
    assert f.status == "FAIL"
    assert "nowhere.badmx.test has no A/AAAA" in f.summary


def test_nonexistent_domain_fails(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "nosuchdomain.test"), "mx")
    assert f.status == "FAIL"
    assert "NXDOMAIN" in f.summary


def test_servfail_is_an_error_not_a_verdict(lookup: Lookup) -> None:
    f = only(check_mx(lookup, "broken.test"), "mx")
    assert f.status == "ERROR"
    assert "SERVFAIL" in f.summary


# --------------------------------------------------------------------------- SPF


def test_spf_lookups_are_counted_through_includes(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "good.test", None), "spf.lookups")
    assert f.status == "PASS"
    assert f.summary.startswith("2 DNS lookups")


def test_spf_with_11_lookups_fails_naming_the_costly_includes(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "spf11.test", None), "spf.lookups")
    assert f.status == "FAIL"
    assert f.summary.startswith("11 DNS lookups (limit 10)")
    assert "include:a.spf11.test 5" in f.summary and "include:b.spf11.test 5" in f.summary


def test_spf_more_than_two_void_lookups_fail(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "voids.test", None), "spf.void")
    assert f.status == "FAIL"
    assert f.summary.startswith("3 void lookups")


def test_missing_spf_record_fails(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "nullmx.test", None), "spf")
    assert f.status == "FAIL"
    assert "no SPF record" in f.summary


def test_multiple_spf_records_fail(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "twospf.test", None), "spf")
    assert f.status == "FAIL"
    assert "2 SPF records" in f.summary


def test_spf_syntax_error_fails(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "badsyntax.test", None), "spf")
    assert f.status == "FAIL"
    assert "ip4:192.0.2.300" in f.summary


def test_plus_all_fails(lookup: Lookup) -> None:
    assert only(check_spf(lookup, "plusall.test", None), "spf.all").status == "FAIL"


def test_missing_all_warns(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "noall.test", None), "spf.all")
    assert f.status == "WARN"
    assert "no 'all'" in f.summary


def test_redirect_takes_the_targets_all(lookup: Lookup) -> None:
    assert only(check_spf(lookup, "redirect.test", None), "spf.all").summary == "ends with '-all'"


def test_ip_inside_an_ip4_range_passes(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "good.test", Z.GOOD_IP), "spf.ip")
    assert f.status == "PASS"
    assert "= pass" in f.summary and "ip4:192.0.2.0/28" in f.summary


def test_ipv6_passes_through_an_include(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "good.test", Z.GOOD_IP6), "spf.ip")
    assert f.status == "PASS"
    assert "in _spf.good.test" in f.summary


def test_unlisted_ip_fails_with_the_all_result(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "good.test", Z.OTHER_IP), "spf.ip")
    assert f.status == "FAIL"
    assert "= fail" in f.summary and f"ip4:{Z.OTHER_IP}" in f.fix


def test_evaluation_past_ten_lookups_is_permerror(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "spf11.test", Z.GOOD_IP), "spf.ip")
    assert f.status == "FAIL"
    assert "= permerror: more than 10 DNS lookups" in f.summary


def test_exists_with_macros_is_evaluated(lookup: Lookup) -> None:
    assert only(check_spf(lookup, "macro.test", Z.GOOD_IP), "spf.ip").status == "PASS"
    assert only(check_spf(lookup, "macro.test", Z.OTHER_IP), "spf.ip").status == "FAIL"


def test_redirect_is_followed_when_evaluating(lookup: Lookup) -> None:
    f = only(check_spf(lookup, "redirect.test", Z.GOOD_IP), "spf.ip")
    assert f.status == "PASS"
    assert "in good.test" in f.summary


# --------------------------------------------------------------------------- DKIM


@pytest.mark.parametrize(
    ("selector", "status", "words"),
    [
        ("s2048", "PASS", "RSA 2048-bit key"),
        ("s1024", "WARN", "RSA 1024-bit key"),
        ("s512", "FAIL", "RSA 512-bit key"),
        ("ed", "PASS", "ed25519 key"),
        ("revoked", "FAIL", "revoked"),
        ("testing", "WARN", "testing mode"),
        ("missing", "FAIL", "no DKIM key at missing._domainkey.good.test"),
    ],
)
def test_dkim_key_verdicts(lookup: Lookup, selector: str, status: str, words: str) -> None:
    f = only(check_dkim(lookup, "good.test", selector), f"dkim:{selector}")
    assert (f.status, words in f.summary) == (status, True), f


# --------------------------------------------------------------------------- DMARC


def test_dmarc_reject_passes(lookup: Lookup) -> None:
    findings = check_dmarc(lookup, "good.test")
    assert only(findings, "dmarc").status == "PASS"
    assert only(findings, "dmarc.rua").status == "PASS"


def test_missing_dmarc_fails(lookup: Lookup) -> None:
    f = only(check_dmarc(lookup, "nodmarc.test"), "dmarc")
    assert f.status == "FAIL"
    assert "no DMARC record at _dmarc.nodmarc.test" in f.summary


def test_policy_none_warns(lookup: Lookup) -> None:
    f = only(check_dmarc(lookup, "pnone.test"), "dmarc")
    assert f.status == "WARN"
    assert "p=none" in f.summary


def test_partial_pct_warns(lookup: Lookup) -> None:
    f = only(check_dmarc(lookup, "pct.test"), "dmarc")
    assert f.status == "WARN"
    assert "20%" in f.summary


def test_invalid_policy_fails(lookup: Lookup) -> None:
    f = only(check_dmarc(lookup, "badpolicy.test"), "dmarc")
    assert f.status == "FAIL"
    assert "p=block" in f.summary


def test_reports_to_another_domain_need_its_authorization(lookup: Lookup) -> None:
    f = only(check_dmarc(lookup, "pnone.test"), "dmarc.rua")
    assert f.status == "WARN"
    assert "pnone.test._report._dmarc.reports.test" in f.summary


def test_subdomain_without_record_inherits_the_parents_sp(lookup: Lookup) -> None:
    findings = check_dmarc(lookup, "sub.inherit.test")
    assert [f.status for f in findings if f.check == "dmarc"] == ["WARN", "PASS"]
    assert "_dmarc.inherit.test applies" in findings[0].summary


# --------------------------------------------------------------------------- PTR


def test_forward_confirmed_ptr_passes(lookup: Lookup) -> None:
    f = only(check_ptr(lookup, Z.GOOD_IP), "ptr")
    assert f.status == "PASS"
    assert "forward-confirmed" in f.summary


def test_ptr_mismatch_fails(lookup: Lookup) -> None:
    f = only(check_ptr(lookup, Z.MISMATCH_IP), "ptr")
    assert f.status == "FAIL"
    assert "PTR mismatch" in f.summary and "192.0.2.21" in f.summary


def test_missing_ptr_fails(lookup: Lookup) -> None:
    f = only(check_ptr(lookup, Z.NOPTR_IP), "ptr")
    assert f.status == "FAIL"
    assert "no PTR record" in f.summary


# --------------------------------------------------------------------------- DNSBL


def test_listed_ip_fails_with_the_lists_reason(lookup: Lookup) -> None:
    f = only(check_dnsbl(lookup, Z.LISTED_IP, [Z.BLOCKLIST]), f"dnsbl:{Z.BLOCKLIST}")
    assert f.status == "FAIL"
    assert "127.0.0.2" in f.summary and "Listed for spam" in f.summary


def test_unlisted_ip_passes(lookup: Lookup) -> None:
    f = only(check_dnsbl(lookup, Z.GOOD_IP, [Z.BLOCKLIST]), "dnsbl")
    assert f.status == "PASS"


def test_refused_query_is_an_error_not_a_listing(lookup: Lookup) -> None:
    findings = check_dnsbl(lookup, Z.GOOD_IP, [Z.BLOCKLIST, Z.REFUSING_LIST])
    assert statuses(findings) == {"PASS", "ERROR"}
    f = only(findings, f"dnsbl:{Z.REFUSING_LIST}")
    assert "refused the query (127.255.255.254" in f.summary


def test_dnsbl_names_reverse_ipv4_octets_and_ipv6_nibbles() -> None:
    assert reversed_ip("192.0.2.1") == "1.2.0.192"
    assert reversed_ip("2001:db8::1").startswith("1.0.0.0.0.0.0.0")
    assert reversed_ip("2001:db8::1").endswith("8.b.d.0.1.0.0.2")
