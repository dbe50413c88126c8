"""SPF record grammar and macro expansion (RFC 7208), without DNS."""

from __future__ import annotations

import pytest

from smtpguard.ops.spf import MacroContext, SpfSyntaxError, expand, is_spf, parse

# RFC 7208 section 7.4: sender strong-bad@email.example.com, IP 192.0.2.3.
CTX = MacroContext("192.0.2.3", "strong-bad@email.example.com", "mx.example.org")
DOMAIN = "email.example.com"


@pytest.mark.parametrize(
    ("macro", "expanded"),
    [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ],
)
def test_macro_expansion_matches_rfc_7208_examples(macro: str, expanded: str) -> None:
    assert expand(macro, CTX, DOMAIN) == expanded


def test_ipv6_macro_expands_to_reversed_nibbles() -> None:
    ctx = MacroContext("2001:db8::cb01", "strong-bad@email.example.com", "")
    assert expand("%{ir}.%{v}._spf.%{d2}", ctx, DOMAIN) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_version_needs_a_space_or_the_end() -> None:
    assert is_spf("v=spf1 -all") and is_spf("V=SPF1") and not is_spf("v=spf10 -all")


def test_parser_reads_qualifiers_cidrs_and_modifiers() -> None:
    record = parse("v=spf1 ~a:mail.example.com/24//64 -mx/28 ip6:2001:db8::/32 redirect=x.test")
    a, mx, ip6 = record.mechanisms
    assert (a.qualifier, a.value, a.cidr4, a.cidr6) == ("~", "mail.example.com", 24, 64)
    assert (mx.qualifier, mx.value, mx.cidr4) == ("-", "", 28)
    assert ip6.value == "2001:db8::/32"
    assert record.redirect is not None and record.redirect.value == "x.test"


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ipv4:192.0.2.1",  # unknown mechanism
        "v=spf1 ip4:192.0.2.300",  # bad address
        "v=spf1 a/33",  # prefix out of range
        "v=spf1 include",  # include needs a domain
        "v=spf1 all:x",  # all takes no argument
        "v=spf1 redirect=a.test redirect=b.test",  # twice
        "v=spf1 exists:%{z}.test",  # unknown macro letter
        "v=spf1 include:bad%macro.test",  # a lone "%"
    ],
)
def test_invalid_records_are_syntax_errors(record: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse(record)


def test_unknown_modifiers_are_allowed() -> None:
    assert parse("v=spf1 -all moo=cow").mechanisms[0].name == "all"
