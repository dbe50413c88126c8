"""Address and domain normalisation: one canonical form, garbage refused with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.address import normalize_address, normalize_domain, normalize_target, split_address
from smtpguard.errors import AddressError, UserError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("foo@example.com", "foo@example.com"),
        ("<Foo@EXAMPLE.com>", "foo@example.com"),
        ("  <foo@example.com>  ", "foo@example.com"),
        ("Foo@Bücher.de", "foo@xn--bcher-kva.de"),
        ("foo@XN--BCHER-KVA.DE", "foo@xn--bcher-kva.de"),
        ("first.last+tag@example.com", "first.last+tag@example.com"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ('"foo"@example.com', "foo@example.com"),
        ('"John Doe"@example.com', '"john doe"@example.com'),
        ('"a@b"@example.com', '"a@b"@example.com'),
        ("<@relay1.example,@relay2.example:user@example.com>", "user@example.com"),
        ("user@[192.0.2.1]", "user@[192.0.2.1]"),
        ("user@[IPv6:2001:DB8:0:0::1]", "user@[IPv6:2001:db8::1]"),
        ("Ærøskøbing@example.dk", "ærøskøbing@example.dk"),
        ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
        ("localhost-user@localhost", "localhost-user@localhost"),
    ],
)
def test_address_normalises_to_canonical_form(given: str, expected: str) -> None:
    assert normalize_address(given) == expected


def test_local_part_compares_case_insensitively() -> None:
    assert normalize_address("John.Smith@example.com") == normalize_address(
        "john.smith@example.com"
    )


def test_local_part_unicode_is_nfc_normalised() -> None:
    decomposed = "jose\u0301@example.com"  # e + combining acute
    composed = "jos\u00e9@example.com"
    assert normalize_address(decomposed) == normalize_address(composed) == composed


def test_dots_and_plus_tags_are_not_folded() -> None:
    assert normalize_address("a.b+x@gmail.com") != normalize_address("ab@gmail.com")


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("", "empty address"),
        ("<>", "empty address"),
        ("foo", "no '@'"),
        ("@example.com", "empty local part"),
        ("foo@", "empty domain"),
        ("a..b@example.com", "consecutive dots"),
        (".a@example.com", "starts or ends with a dot"),
        ("a b@example.com", "character ' '"),
        ("a@b@example.com", "character '@'"),
        ("foo@example..com", "empty label"),
        ("foo@example.com.", "empty label"),
        ("foo@-example.com", "label '-example'"),
        ("foo@exa_mple.com", "label 'exa_mple'"),
        ("foo@xn--zz.com", "not valid punycode"),
        ("foo@" + "a" * 64 + ".com", "longer than 63 octets"),
        ("x" * 65 + "@example.com", "65 octets"),
        ("foo@example.com\r\nRCPT TO:<evil@example.com>", "control characters"),
        ("foo\x00@example.com", "control characters"),
        ("<foo@example.com", "unbalanced angle brackets"),
        ('"foo@example.com', "unbalanced quotes"),
        ("foo@[300.1.1.1]", "not a valid IP address literal"),
        ("<@relay:>", "empty address"),
        ("<@:foo@example.com>", "malformed source route"),
    ],
)
def test_garbage_is_refused_naming_the_problem(given: str, problem: str) -> None:
    with pytest.raises(AddressError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        normalize_address(given)


def test_address_error_is_an_operator_error_exit_2() -> None:
    with pytest.raises(UserError) as info:
        normalize_address("nonsense")
    assert info.value.exit_code == 2


def test_domain_longer_than_255_octets_is_refused() -> None:
    with pytest.raises(AddressError, match="RFC 5321 limit 255"):
        normalize_domain(".".join(["a" * 60] * 5))


def test_domain_is_lowercased_and_idna_encoded() -> None:
    assert normalize_domain("Bücher.DE") == "xn--bcher-kva.de"


def test_split_address_returns_normalised_parts() -> None:
    assert split_address("<Foo@Bücher.de>") == ("foo", "xn--bcher-kva.de")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("example.com", ("domain", "example.com")),
        ("@Example.COM", ("domain", "example.com")),
        ("bob@example.com", ("address", "bob@example.com")),
    ],
)
def test_target_is_an_address_or_a_whole_domain(given: str, expected: tuple[str, str]) -> None:
    assert normalize_target(given) == expected


_atext = st.text(
    alphabet=st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
    ),
    min_size=1,
    max_size=20,
)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(local=_atext, labels=st.lists(_label, min_size=1, max_size=4))
def test_normalisation_is_idempotent(local: str, labels: list[str]) -> None:
    once = normalize_address(f"{local}@{'.'.join(labels)}")
    assert normalize_address(once) == once
    assert normalize_address(f"<{once.upper()}>") == once
