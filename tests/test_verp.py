"""Signed return paths: a token names one queued message and one recipient, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard import config
from smtpguard.errors import ConfigError
from smtpguard.intake.verp import (
    MAX_MESSAGE_ID,
    PREFIX,
    TOKEN_CHARS,
    SignedVerpCodec,
    key_id,
)

DOMAIN = "bounce.example.com"
KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_796_983_200.0  # 2026-12-11T10:00:00Z
DAY = 86400.0


def codec(key: bytes = KEY, **kw: object) -> SignedVerpCodec:
    return SignedVerpCodec(DOMAIN, key, lifetime=14 * DAY, **kw)  # type: ignore[arg-type]


def other_key(*, same_id: bool) -> bytes:
    """A key whose 5-bit id equals (or differs from) KEY's."""
    for i in range(10_000):
        candidate = b"another key of 32 bytes ....%04d" % i
        if (key_id(candidate) == key_id(KEY)) == same_id:
            return candidate
    raise AssertionError("no such key")


addresses = st.builds(
    "{}@{}.{}".format,
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=20).filter(
        lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
    ),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20),
    st.sampled_from(["com", "org", "example", "de"]),
)
message_ids = st.integers(min_value=0, max_value=MAX_MESSAGE_ID)
times = st.floats(min_value=1.6e9, max_value=3.0e9)


@given(message_ids, addresses, times)
def test_round_trip_names_the_message_and_the_recipient(mid: int, rcpt: str, now: float) -> None:
    c = codec()
    address = c.encode(mid, rcpt, now=now)
    check = c.check(address, rcpt, now=now)
    assert check.verified, check
    assert check.message_id == mid
    assert check.token is not None and check.token.names(rcpt)


@given(message_ids, addresses)
def test_return_path_is_short_lowercase_and_under_64_octets(mid: int, rcpt: str) -> None:
    address = codec().encode(mid, rcpt, now=NOW)
    local, _, domain = address.partition("@")
    assert domain == DOMAIN
    assert local == local.lower()
    assert len(local.encode()) == len(PREFIX) + TOKEN_CHARS < 64


@settings(max_examples=300)
@given(message_ids, addresses, st.data())
def test_any_single_character_change_fails(mid: int, rcpt: str, data: st.DataObject) -> None:
    c = codec()
    address = c.encode(mid, rcpt, now=NOW)
    token_start = len(PREFIX)
    i = data.draw(st.integers(min_value=token_start, max_value=token_start + TOKEN_CHARS - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda ch: ch.isprintable()))
    if replacement.lower() == address[i]:
        return  # the same character (tokens are compared case-insensitively)
    tampered = address[:i] + replacement + address[i + 1 :]
    check = c.check(tampered, rcpt, now=NOW)
    assert not check.verified
    assert check.reason in ("malformed", "unknown-key", "bad-signature")


def test_local_part_is_compared_case_insensitively() -> None:
    c = codec()
    address = c.encode(42, "bob@example.org", now=NOW)
    assert c.check(address.upper(), "BOB@example.org", now=NOW).verified


def test_token_for_another_recipient_is_refused() -> None:
    c = codec()
    address = c.encode(42, "bob@example.org", now=NOW)
    check = c.check(address, "carol@example.org", now=NOW)
    assert check.reason == "other-recipient"
    assert check.message_id == 42  # the signature was fine: only the recipient differs


def test_recipient_is_compared_normalised() -> None:
    c = codec()
    address = c.encode(42, "Bob@Example.ORG", now=NOW)
    assert c.check(address, "<bob@example.org>", now=NOW).verified


def test_token_is_valid_through_its_last_day_then_expired() -> None:
    c = codec()
    address = c.encode(7, "bob@example.org", now=NOW)
    check = c.check(address, now=NOW)
    assert check.token is not None
    assert check.token.expires > NOW + 14 * DAY
    assert c.check(address, now=check.token.expires - 1).verified
    assert c.check(address, now=check.token.expires).reason == "expired"


def test_unknown_key_is_refused() -> None:
    address = codec(other_key(same_id=False)).encode(7, "bob@example.org", now=NOW)
    assert codec().check(address, now=NOW).reason == "unknown-key"


def test_another_key_with_the_same_id_fails_the_signature() -> None:
    address = codec(other_key(same_id=True)).encode(7, "bob@example.org", now=NOW)
    assert codec().check(address, now=NOW).reason == "bad-signature"


def test_previous_key_verifies_until_the_configured_time_then_retires() -> None:
    new_key = other_key(same_id=False)
    old_address = codec().encode(7, "bob@example.org", now=NOW)
    rotated = codec(new_key, previous_key=KEY, previous_valid_until=NOW + DAY)
    check = rotated.check(old_address, "bob@example.org", now=NOW + 60)
    assert check.verified and check.token is not None and check.token.previous_key
    assert rotated.check(old_address, now=NOW + DAY).reason == "retired-key"
    fresh = rotated.encode(8, "bob@example.org", now=NOW)
    assert rotated.check(fresh, "bob@example.org", now=NOW + 2 * DAY).verified


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("postmaster@bounce.example.com", "no-token"),
        ("b+aaaa@other.example", "no-token"),
        ("MAILER-DAEMON", "no-token"),
        ("", "no-token"),
        ("b+short@bounce.example.com", "malformed"),
        ("b+" + "1" * TOKEN_CHARS + "@bounce.example.com", "malformed"),
        ("b+" + "a" * TOKEN_CHARS + "@bounce.example.com", "malformed"),  # version 0
    ],
)
def test_what_is_not_a_token_says_so(address: str, reason: str) -> None:
    assert codec().check(address, now=NOW).reason == reason


def test_message_id_beyond_40_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        codec().encode(MAX_MESSAGE_ID + 1, "bob@example.org")


# --------------------------------------------------------------------------- configuration


def secret_file(tmp_path: Path, data: bytes = KEY + b"\n", mode: int = 0o600) -> Path:
    p = tmp_path / "verp.key"
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def test_codec_is_off_without_a_bounce_domain() -> None:
    assert SignedVerpCodec.from_config(config.Config().intake) is None


def test_codec_from_config_reads_the_key_file(tmp_path: Path) -> None:
    cfg = config.Config().with_overrides(
        intake={"bounce_domain": DOMAIN, "secret_file": str(secret_file(tmp_path))}
    )
    c = SignedVerpCodec.from_config(cfg.intake)
    assert c is not None
    assert codec().check(c.encode(1, "bob@example.org", now=NOW), now=NOW).verified


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    cfg = config.Config().with_overrides(
        intake={"bounce_domain": DOMAIN, "secret_file": str(secret_file(tmp_path, mode=0o644))}
    )
    with pytest.raises(ConfigError, match="readable by everyone"):
        SignedVerpCodec.from_config(cfg.intake)


def test_short_key_file_is_refused(tmp_path: Path) -> None:
    cfg = config.Config().with_overrides(
        intake={"bounce_domain": DOMAIN, "secret_file": str(secret_file(tmp_path, b"short"))}
    )
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        SignedVerpCodec.from_config(cfg.intake)


def test_bounce_domain_without_a_key_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "smtpguard.toml"
    p.write_text('[intake]\nbounce_domain = "bounce.example.com"\n')
    with pytest.raises(ConfigError, match=r"\[intake\]: bounce_domain is set but no secret_file"):
        config.load(p)


def test_previous_key_needs_its_end_time(tmp_path: Path) -> None:
    p = tmp_path / "smtpguard.toml"
    p.write_text(f'[intake]\nprevious_secret = "{KEY.decode()}"\n')
    with pytest.raises(ConfigError, match="previous_valid_until go together"):
        config.load(p)


def test_token_lifetime_under_a_day_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "smtpguard.toml"
    p.write_text('[intake]\ntoken_lifetime = "12h"\n')
    with pytest.raises(ConfigError, match=r"intake\.token_lifetime: expected at least a day"):
        config.load(p)


def test_config_check_never_prints_a_secret(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "smtpguard.toml"
    p.write_text(
        f'[intake]\nbounce_domain = "{DOMAIN}"\nsecret = "{KEY.decode()}"\n'
        f'[webhooks]\npostmark_user = "pm"\npostmark_password = "hunter2-but-longer"\n'
    )
    r = cli("config", "check", str(p))
    assert r.returncode == 0, r.stderr
    assert KEY.decode() not in r.stdout and "hunter2" not in r.stdout
    assert 'secret = "********"' in r.stdout
    assert 'postmark_password = "********"' in r.stdout
