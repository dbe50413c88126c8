"""The shaping file: shipped defaults, the operator's overlay, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.shaping import limits
from smtpguard.shaping.limits import ShapingError, parse_rate


def overlay(tmp_path: Path, text: str) -> limits.ShapingRules:
    path = tmp_path / "shaping.toml"
    path.write_text(text)
    return limits.load(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ShapingError) as e:
        overlay(tmp_path, text)
    return str(e.value)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("20/s", 20.0), ("100/min", 100 / 60), ("5000/h", 5000 / 3600), ("86400/d", 1.0)],
)
def test_rates_are_read_per_second(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


def test_an_empty_rate_is_no_limit():
    assert parse_rate("") is None


def test_every_shipped_provider_and_rule_names_its_source():
    rules = limits.load()
    assert rules.providers and rules.automation
    assert all(p.source for p in rules.providers)
    assert all(r.source for r in rules.automation)


def test_shipped_file_gives_postfix_recipient_limit_and_no_rate():
    d = limits.load().defaults
    assert (d.recipients, d.rate) == (50, None)


def test_operator_defaults_overlay_key_by_key(tmp_path):
    rules = overlay(tmp_path, '[defaults]\nrate = "100/min"\n')
    assert rules.defaults.rate == pytest.approx(100 / 60)
    assert rules.defaults.recipients == 50  # still the shipped value


def test_operator_provider_overlays_the_shipped_one(tmp_path):
    rules = overlay(tmp_path, '[provider.google]\nrate = "5000/h"\n')
    google = next(p for p in rules.providers if p.name == "google")
    assert google.limits.rate == pytest.approx(5000 / 3600)
    assert ".google.com" in google.suffixes


def test_provider_unset_keys_inherit_the_operators_defaults(tmp_path):
    rules = overlay(tmp_path, "[defaults]\nrecipients = 20\n")
    assert all(p.limits.recipients == 20 for p in rules.providers)


def test_operator_can_switch_a_shipped_provider_off(tmp_path):
    rules = overlay(tmp_path, "[provider.yahoo]\nenabled = false\n")
    assert "yahoo" not in {p.name for p in rules.providers}


def test_operator_rule_with_a_shipped_id_replaces_it_and_comes_first(tmp_path):
    rules = overlay(
        tmp_path,
        '[[automation]]\nid = "yahoo.tss04"\nmatch = "TSS04"\naction = "suspend"\n'
        'duration = "10m"\n',
    )
    first = rules.automation[0]
    assert (first.id, first.duration) == ("yahoo.tss04", 600.0)
    assert [r.id for r in rules.automation].count("yahoo.tss04") == 1


def test_a_bad_rate_names_the_key(tmp_path):
    msg = error_of(tmp_path, '[provider.google]\nrate = "fast"\n')
    assert "provider.google.rate" in msg and "'fast'" in msg
    assert "\n" not in msg


def test_an_unknown_key_is_refused_with_the_known_ones(tmp_path):
    msg = error_of(tmp_path, "[defaults]\nconnection = 5\n")
    assert "defaults.connection: unknown key" in msg


def test_an_unknown_table_is_refused(tmp_path):
    assert "unknown top-level key 'limits'" in error_of(tmp_path, "[limits]\nrate = 1\n")


def test_connections_must_be_a_positive_whole_number(tmp_path):
    assert "defaults.connections: 0 is not a whole number >= 1" in error_of(
        tmp_path, "[defaults]\nconnections = 0\n"
    )


def test_a_backtracking_automation_pattern_is_refused(tmp_path):
    msg = error_of(
        tmp_path,
        '[[automation]]\nid = "x"\nmatch = "(a+)+b"\naction = "suspend"\nduration = "1m"\n',
    )
    assert "automation #1 (x).match" in msg


def test_an_automation_rate_action_needs_a_rate(tmp_path):
    msg = error_of(
        tmp_path, '[[automation]]\nid = "x"\nmatch = "slow"\naction = "rate"\nduration = "1m"\n'
    )
    assert "automation #1 (x).value" in msg


def test_a_new_provider_needs_suffixes(tmp_path):
    msg = error_of(tmp_path, '[provider.mine]\nrate = "1/s"\n')
    assert "provider.mine.suffixes" in msg


def test_bad_toml_is_one_line(tmp_path):
    msg = error_of(tmp_path, "[defaults\n")
    assert "invalid TOML" in msg and "\n" not in msg


def test_shaping_check_accepts_a_good_file(cli, tmp_path):
    path = tmp_path / "shaping.toml"
    path.write_text('[global]\nrate = "50/s"\n')
    result = cli("shaping", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "global rate 50/s" in result.stdout


def test_shaping_check_exits_2_with_one_line_naming_the_key(cli, tmp_path):
    path = tmp_path / "shaping.toml"
    path.write_text('[smarthost]\nrate = "lots"\n')
    result = cli("shaping", "check", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "smarthost.rate" in result.stderr
