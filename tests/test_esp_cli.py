"""``suppression import --from`` / ``export --format``: ESP exports through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smtpguard.cli.suppression import IMPORT_FORMATS
from smtpguard.intake import exports

SAMPLES = Path(__file__).parent / "esp"
FILES = {
    "ses": "ses-list-suppressed-destinations.json",
    "mailgun": "mailgun-bounces.csv",
    "sendgrid": "sendgrid-bounces.csv",
    "postmark": "postmark-suppressions-dump.json",
}


def check(cli: Any, address: str) -> str:
    return cli("suppression", "check", address).stdout


def test_cli_offers_every_import_format() -> None:
    assert IMPORT_FORMATS == exports.IMPORT_FORMATS


@pytest.mark.parametrize("provider", sorted(FILES))
def test_each_documented_export_imports_with_from(cli: Any, provider: str) -> None:
    r = cli("suppression", "import", "--from", provider, str(SAMPLES / FILES[provider]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("imported ")


@pytest.mark.parametrize("provider", sorted(FILES))
def test_each_documented_export_is_recognised_without_from(cli: Any, provider: str) -> None:
    r = cli("suppression", "import", str(SAMPLES / FILES[provider]))
    assert r.returncode == 0, r.stderr


def test_ses_reasons_land_on_the_list(cli: Any) -> None:
    assert cli("suppression", "import", str(SAMPLES / FILES["ses"])).returncode == 0
    assert "suppressed userunknown since 2020-04-10T21:03:05Z" in check(cli, "bounce@example.com")
    assert "suppressed complaint" in check(cli, "complaint@example.com")
    history = json.loads(
        cli("suppression", "history", "bounce@example.com", "--format", "json").stdout
    )
    assert history[0]["actor"] == "import:ses-list-suppressed-destinations.json"
    assert history[0]["note"] == "from ses: BOUNCE"


def test_postmark_manual_suppression_by_the_recipient_is_unsubscribe(cli: Any) -> None:
    assert (
        cli(
            "suppression", "import", "--from", "postmark", str(SAMPLES / FILES["postmark"])
        ).returncode
        == 0
    )
    assert "suppressed unsubscribe" in check(cli, "address@wildbit.com")


def test_stdin_import(cli: Any) -> None:
    data = (SAMPLES / FILES["ses"]).read_text()
    r = cli("suppression", "import", "-", input=data)
    assert r.returncode == 0, r.stderr
    assert "imported 2 entries from -" in r.stdout
    history = json.loads(
        cli("suppression", "history", "bounce@example.com", "--format", "json").stdout
    )
    assert history[0]["actor"] == "import:stdin"


def test_plain_list_from_stdin_with_a_reason(cli: Any) -> None:
    r = cli(
        "suppression",
        "import",
        "-",
        "--reason",
        "unsubscribe",
        input="a@example.com\nb@example.com\n",
    )
    assert r.returncode == 0, r.stderr
    assert "suppressed unsubscribe" in check(cli, "b@example.com")


def test_reason_cannot_override_an_esp_export(cli: Any) -> None:
    r = cli(
        "suppression", "import", "--from", "ses", "--reason", "manual", str(SAMPLES / FILES["ses"])
    )
    assert r.returncode == 2
    assert "--reason does not apply to ses" in r.stderr
    assert "Traceback" not in r.stderr


def test_from_and_format_exclude_each_other(cli: Any) -> None:
    r = cli(
        "suppression", "import", "--from", "ses", "--format", "csv", str(SAMPLES / FILES["ses"])
    )
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_invalid_record_in_a_json_export_is_named_and_nothing_imported(
    cli: Any, tmp_path: Path
) -> None:
    doc = {"SuppressedDestinationSummaries": [
        {"EmailAddress": "ok@example.com", "Reason": "BOUNCE"},
        {"EmailAddress": "not an address", "Reason": "BOUNCE"},
    ]}  # fmt: skip
    p = tmp_path / "ses.json"
    p.write_text(json.dumps(doc))
    r = cli("suppression", "import", "--from", "ses", str(p))
    assert r.returncode == 2
    assert "1 invalid record (2)" in r.stderr and "record 2:" in r.stderr
    assert "not suppressed" in check(cli, "ok@example.com")


def test_expiry_applies_to_esp_imports(cli: Any) -> None:
    assert (
        cli(
            "suppression",
            "import",
            "--from",
            "ses",
            "--expires",
            "30d",
            str(SAMPLES / FILES["ses"]),
        ).returncode
        == 0
    )
    assert "expires " in check(cli, "bounce@example.com")


@pytest.mark.parametrize("fmt", exports.ESP_FORMATS)
def test_export_in_each_esp_format_round_trips(
    cli: Any, tmp_path: Path, data_dir: Path, fmt: str
) -> None:
    for address, reason in (("a@example.com", "userunknown"), ("c@example.com", "complaint")):
        assert cli("suppression", "add", address, "--reason", reason).returncode == 0
    assert cli("suppression", "add", "@gone.example", "--reason", "hostunknown").returncode == 0
    out = tmp_path / f"export.{fmt}"
    r = cli("suppression", "export", "--format", fmt, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "left out 1 whole-domain entry" in r.stderr
    assert exports.sniff(out.read_text()[:4096]) == fmt
    other = tmp_path / "other"
    other.mkdir()
    from smtpguard.store.db import connect

    connect(other / "var").close()
    r = cli("--data-dir", str(other / "var"), "suppression", "import", str(out))
    assert r.returncode == 0, r.stderr
    r = cli("--data-dir", str(other / "var"), "suppression", "check", "a@example.com")
    assert "suppressed userunknown" in r.stdout
