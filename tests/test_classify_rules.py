"""Rules as data: loading, validation errors, precedence, operator overrides, `rules check`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard.classify import Classifier
from smtpguard.classify.rules import RulesError, load, normalize, shipped_path
from smtpguard.classify.verdict import REASONS
from smtpguard.errors import UserError

Cli = Callable[..., subprocess.CompletedProcess[str]]
#: The start of a valid rule with id "x".
X = '[[rule]]\nid = "x"\nreason = "blocked"\n'


def write(tmp_path: Path, text: str, name: str = "operator.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ the shipped file


def test_shipped_rules_load_with_valid_reasons_and_unique_ids() -> None:
    rs = load()
    assert rs.shipped_count == len(rs.rules) > 30
    assert all(r.reason in REASONS for r in rs.rules)
    assert len({r.id for r in rs.rules}) == len(rs.rules)


def test_shipped_status_table_maps_rfc3463_codes() -> None:
    rs = load()
    assert rs.status_reason("5.1.1") == "userunknown"
    assert rs.status_reason("4.2.2") == "mailboxfull"
    assert rs.status_reason("5.7.26") == "authfailure"
    assert rs.status_reason("4.4.7") == "expired"


def test_normalize_bounds_lowercases_and_drops_continuation_codes() -> None:
    assert (
        normalize("Messages with 550-5.7.1 multiple\r\n   ADDRESSES")
        == "messages with multiple addresses"
    )
    assert len(normalize("x" * 2_000_000)) == 4096


# ------------------------------------------------------------------ precedence


def test_operator_rule_comes_before_shipped_rules(tmp_path: Path) -> None:
    p = write(
        tmp_path, '[[rule]]\nid = "local.full"\nreason = "mailboxfull"\nany = ["user unknown"]\n'
    )
    v = Classifier.load(p).reply_line("550 5.1.1 User unknown", stage="rcpt")
    assert (v.reason, v.rule) == ("mailboxfull", "local.full")


def test_operator_rule_with_a_shipped_id_replaces_it(tmp_path: Path) -> None:
    p = write(
        tmp_path, '[[rule]]\nid = "mailboxfull"\nreason = "mailboxfull"\nany = ["boite pleine"]\n'
    )
    clf = Classifier.load(p)
    assert [r.id for r in clf.rules.rules].count("mailboxfull") == 1
    assert clf.reply_line("552 boite pleine").rule == "mailboxfull"
    # The shipped wording of that rule is gone: "over quota" now falls to the reply code table.
    assert clf.reply_line("552 over quota").rule == "reply_code:552"


def test_operator_can_switch_a_shipped_rule_off(tmp_path: Path) -> None:
    p = write(tmp_path, '[[rule]]\nid = "greylisting"\nenabled = false\n')
    clf = Classifier.load(p)
    assert "greylisting" not in {r.id for r in clf.rules.rules}
    assert "greylist" not in clf.reply_line("451 4.7.1 Greylisted").extra


def test_higher_priority_wins_within_a_file_then_file_order(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[[rule]]\nid = "first"\nreason = "blocked"\nany = ["zzz"]\n'
        '[[rule]]\nid = "second"\nreason = "spamdetected"\nany = ["zzz"]\n'
        '[[rule]]\nid = "urgent"\nreason = "virusdetected"\nany = ["zzz"]\npriority = 5\n',
    )
    rs = load(p)
    assert [r.id for r in rs.rules[:3]] == ["urgent", "first", "second"]
    assert rs.match("zzz").id == "urgent"


def test_operator_status_table_overlays_the_shipped_one(tmp_path: Path) -> None:
    p = write(tmp_path, '[status]\n"5.7.1" = "blocked"\n')
    rs = load(p)
    assert rs.status_reason("5.7.1") == "blocked"
    assert rs.status_reason("5.1.1") == "userunknown"


def test_rule_restricted_to_codes_and_stages_only_fires_there(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        X + 'any = ["qqq"]\ncodes = ["55"]\nstages = ["rcpt"]\n',
    )
    clf = Classifier.load(p)
    assert clf.reply_line("550 qqq", stage="rcpt").rule == "x"
    assert clf.reply_line("450 qqq", stage="rcpt").rule != "x"
    assert clf.reply_line("550 qqq", stage="data").rule != "x"


def test_all_and_not_lists_narrow_a_rule(tmp_path: Path) -> None:
    p = write(
        tmp_path, '[[rule]]\nid = "x"\nreason = "blocked"\nall = ["aaa", "bbb"]\nnot = ["ccc"]\n'
    )
    rs = load(p)
    assert rs.match("aaa bbb").id == "x"
    assert rs.match("aaa") is None
    assert rs.match("aaa bbb ccc") is None


def test_regex_rules_match_case_insensitively(tmp_path: Path) -> None:
    # Rules see the reply text without its code and status.
    p = write(tmp_path, '[[rule]]\nid = "x"\nreason = "blocked"\nregex = [\'^[a-z]{3}$\']\n')
    assert Classifier.load(p).reply_line("550 5.7.1 ABC").rule == "x"


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (X + 'any = ["a"]\nanyy = ["b"]\n', "rule 'x' (#1): unknown key 'anyy'"),
        (X.replace("blocked", "nope") + 'any = ["a"]\n', "rule 'x' (#1): unknown reason 'nope'"),
        (X + "regex = ['(unclosed']\n", "rule 'x' (#1): bad regex '(unclosed'"),
        (X + "regex = ['(a+)+$']\n", "nested quantifier"),
        (X, "rule 'x' (#1): needs at least one of any, all, regex"),
        ('[[rule]]\nreason = "blocked"\nany = ["a"]\n', "rule #1: 'id' is required"),
        (X + 'any = ["a"]\n' + X + 'any = ["b"]\n', "rule 'x' (#2): duplicate id"),
        (X + 'any = ["a"]\nstages = ["quit"]\n', "stage 'quit' unknown"),
        (X + 'any = ["a"]\ncodes = ["5x"]\n', "codes '5x'"),
        (X + 'any = "a"\npriority = "high"\n', "priority must be an integer"),
        ("[rules]\nx = 1\n", "unknown top-level key 'rules'"),
        ('[status]\n"5.1" = "userunknown"\n', "[status] key '5.1'"),
        ('[reply_code]\n"550" = "gone"\n', "[reply_code] 550: unknown reason 'gone'"),
        ("[[rule]\n", "invalid TOML"),
    ],
)  # fmt: skip
def test_invalid_rule_files_give_a_precise_error_naming_file_and_rule(
    tmp_path: Path, body: str, message: str
) -> None:
    p = write(tmp_path, body)
    with pytest.raises(RulesError) as e:
        load(p)
    assert str(e.value).startswith(str(p) + ": ")
    assert message in str(e.value)


def test_rules_error_is_a_user_error() -> None:
    assert issubclass(RulesError, UserError)


def test_missing_operator_file_is_a_precise_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load(tmp_path / "nope.toml")


# ------------------------------------------------------------------ `smtpguard rules check`


def test_rules_check_without_a_file_validates_the_shipped_rules(cli: Cli) -> None:
    r = cli("rules", "check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ok: {shipped_path()}: ")
    assert "rules" in r.stdout


def test_rules_check_counts_an_operator_file(cli: Cli, tmp_path: Path) -> None:
    p = write(tmp_path, '[[rule]]\nid = "a"\nreason = "blocked"\nany = ["x"]\n'
                        '[[rule]]\nid = "b"\nreason = "blocked"\nany = ["y"]\n')  # fmt: skip
    r = cli("rules", "check", str(p))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ok: {p}: 2 rules")


def test_rules_check_reports_a_bad_file_in_one_line_with_exit_2(cli: Cli, tmp_path: Path) -> None:
    p = write(tmp_path, '[[rule]]\nid = "bad"\nreason = "blocked"\nregex = ["(x"]\n')
    r = cli("rules", "check", str(p))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"smtpguard: error: {p}: rule 'bad' (#1): bad regex")


def test_rules_check_uses_the_configured_rules_file(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path, '[[rule]]\nid = "a"\nreason = "blocked"\nany = ["x"]\n', name="local.toml")
    conf = write(tmp_path, f'[classifier]\nrules_file = "{tmp_path / "local.toml"}"\n', "c.toml")
    r = cli("rules", "check", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert "local.toml: 1 rules" in r.stdout


def test_classify_uses_operator_rules_from_the_command_line(cli: Cli, tmp_path: Path) -> None:
    p = write(
        tmp_path, '[[rule]]\nid = "local.quota"\nreason = "mailboxfull"\nany = ["boite pleine"]\n'
    )
    r = cli("classify", "--rules", str(p), "--format", "jsonl", "--reply", "550 boite pleine")
    assert r.returncode == 0, r.stderr
    assert '"rule": "local.quota"' in r.stdout


def test_classify_with_a_broken_rules_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    p = write(tmp_path, '[[rule]]\nid = "x"\nreason = "nope"\nany = ["a"]\n')
    r = cli("classify", "--rules", str(p), "--reply", "550 x")
    assert r.returncode == 2
    assert "unknown reason 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_readme_operator_example_is_a_valid_rules_file(cli: Cli, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    r = cli("rules", "check", str(write(tmp_path, example)))
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ documented wording, safe regex


def test_every_shipped_rule_names_where_its_wording_is_documented() -> None:
    rs = load()
    assert all(r.doc.strip() for r in rs.rules), [r.id for r in rs.rules if not r.doc]


def test_a_shipped_rule_without_a_source_is_refused() -> None:
    from smtpguard.classify.rules import parse_text, require_sources

    rules = parse_text("default.toml", X + 'any = ["zzz"]\n')
    with pytest.raises(RulesError, match="rule 'x': shipped rules need a 'source'"):
        require_sources("default.toml", rules)


def test_operator_rules_may_omit_the_source(tmp_path: Path) -> None:
    p = write(tmp_path, X + 'any = ["zzz"]\n')
    assert load(p).match("zzz").id == "x"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"^\s*(?:Out:|<<<)?\s*([45]\d\d)", "unbounded quantifier"),
        (r"[-=*_]{3,}[^\n]{0,80}[-=*_]{3,}", "unbounded quantifier"),
        (r"(ab+){1,9}", "nested quantifier"),
        (r"(x|yy){1,5}", "quantified alternation"),
        (r"[a-z]{0,200}[a-z]{0,200}", "adjacent variable quantifiers"),
    ],
)
def test_rule_regexes_that_can_backtrack_are_refused(
    tmp_path: Path, pattern: str, message: str
) -> None:
    p = write(tmp_path, X + f"regex = ['{pattern}']\n")
    with pytest.raises(RulesError, match=message):
        load(p)


def test_bounded_rule_regexes_load(tmp_path: Path) -> None:
    p = write(tmp_path, X + r"regex = ['messages from \[?[0-9]{1,3}\.[0-9]{1,3}\]? x']" + "\n")
    assert load(p).rules[0].id == "x"


def test_rule_naming_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, X + 'any = ["zzz"]\nproviders = ["nosuchprovider"]\n')
    with pytest.raises(RulesError, match="unknown provider 'nosuchprovider'"):
        load(p)


def test_provider_rules_are_tried_first_and_only_for_their_provider(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[[rule]]\nid = "g"\nreason = "ratelimited"\nany = ["qqq"]\nproviders = ["google"]\n'
        '[[rule]]\nid = "generic"\nreason = "blocked"\nany = ["qqq"]\n',
    )
    rs = load(p)
    assert rs.match("qqq", provider="google").id == "g"
    assert rs.match("qqq", provider="yahoo").id == "generic"
    assert rs.match("qqq").id == "generic"
