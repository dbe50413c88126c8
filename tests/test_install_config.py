"""Where an installed smtpguard finds its configuration, and what ``config check`` checks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard import config
from smtpguard.errors import ConfigError
from tests.fixtures.cli import REPO

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed /etc/smtpguard/smtpguard.toml, stood in for by a file under tmp_path."""
    path = tmp_path / "etc" / "smtpguard.toml"
    path.parent.mkdir()
    path.write_text(f'[store]\ndata_dir = "{tmp_path / "lib"}"\n')
    monkeypatch.setattr(config, "SYSTEM_CONFIG", path)
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    monkeypatch.delenv(config.ENV_DATA_DIR, raising=False)
    return path


def test_system_config_is_read_without_flags(system_config: Path, tmp_path: Path) -> None:
    cfg = config.load()
    assert cfg.source == str(system_config)
    assert cfg.data_dir == tmp_path / "lib"


def test_named_config_beats_the_system_config(system_config: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[store]\ndata_dir = "/srv/other"\n')
    assert config.load(other).store.data_dir == "/srv/other"


def test_env_config_beats_the_system_config(
    system_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[store]\ndata_dir = "/srv/env"\n')
    monkeypatch.setenv(config.ENV_CONFIG, str(other))
    assert config.load().store.data_dir == "/srv/env"


def test_dev_null_means_embedded_defaults(system_config: Path) -> None:
    assert config.load("/dev/null").store.data_dir == "./var"


def test_data_dir_option_beats_the_system_config(system_config: Path) -> None:
    assert config.load(data_dir="/srv/flag").store.data_dir == "/srv/flag"


def test_without_a_system_config_the_defaults_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    cfg = config.load()
    assert (cfg.source, cfg.store.data_dir) == ("(embedded defaults)", "./var")


def test_an_unreadable_system_config_is_an_error_not_a_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path)  # exists, cannot be read as a file
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load()


def run_installed(system_conf: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process whose system config is ``system_conf``, no flags, no env."""
    code = (
        "import sys; from pathlib import Path; import smtpguard.config as c;"
        f" c.SYSTEM_CONFIG = Path({str(system_conf)!r});"
        " from smtpguard.cli.main import main; main(sys.argv[1:])"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli_from_any_directory_uses_the_installed_database(
    system_config: Path, tmp_path: Path
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    added = run_installed(system_config, home, "suppression", "add", "bob@example.com")
    assert added.returncode == 0, added.stderr
    checked = run_installed(system_config, elsewhere, "suppression", "check", "bob@example.com")
    assert checked.returncode == 0 and "suppressed" in checked.stdout, checked.stderr
    assert (tmp_path / "lib" / "smtpguard.db").exists()
    assert not (home / "var").exists() and not (elsewhere / "var").exists()


# --------------------------------------------------------------------------- config check


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "smtpguard.toml"
    p.write_text(text)
    return p


def test_check_fails_on_a_rules_file_it_cannot_read(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "rules.toml"
    r = cli("config", "check", str(write(tmp_path, f'[classifier]\nrules_file = "{missing}"\n')))
    assert r.returncode == 2
    assert r.stderr.startswith(f"smtpguard: error: classifier.rules_file: {missing}: cannot read")
    assert r.stdout == ""


def test_check_fails_on_a_rules_file_that_does_not_load(cli: Cli, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[[rule]\n")
    r = cli("config", "check", str(write(tmp_path, f'[classifier]\nrules_file = "{rules}"\n')))
    assert r.returncode == 2
    assert "classifier.rules_file" in r.stderr and "Traceback" not in r.stderr


def test_check_fails_on_a_file_log_without_a_file(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "check", str(write(tmp_path, '[log]\ndestination = "file"\n')))
    assert r.returncode == 2
    assert r.stderr.startswith("smtpguard: error: log.file: empty")


def test_check_fails_on_a_log_file_in_a_missing_directory(cli: Cli, tmp_path: Path) -> None:
    text = f'[log]\ndestination = "file"\nfile = "{tmp_path}/nope/delivery.log"\n'
    r = cli("config", "check", str(write(tmp_path, text)))
    assert r.returncode == 2
    assert "log.file: cannot write" in r.stderr and "no such directory" in r.stderr


def test_check_rejects_an_unknown_log_destination(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "check", str(write(tmp_path, '[log]\ndestination = "journal"\n')))
    assert r.returncode == 2
    assert "log.destination: expected one of stderr, syslog, file" in r.stderr


def test_check_warns_on_a_trusted_network_wider_than_private(cli: Cli, tmp_path: Path) -> None:
    text = '[relay]\ntrusted_networks = ["127.0.0.0/8", "10.0.0.0/8", "0.0.0.0/0"]\n'
    r = cli("config", "check", str(write(tmp_path, text)))
    assert r.returncode == 0
    (warning,) = r.stderr.splitlines()
    assert warning.startswith("smtpguard: warning: relay.trusted_networks: 0.0.0.0/0 is wider")
    assert "without AUTH" in warning


def test_check_is_quiet_for_loopback_and_private_networks(cli: Cli, tmp_path: Path) -> None:
    text = '[relay]\ntrusted_networks = ["127.0.0.1/32", "192.168.10.0/24", "fd00::/8"]\n'
    r = cli("config", "check", str(write(tmp_path, text)))
    assert (r.returncode, r.stderr) == (0, "")


def test_check_prints_durations_as_written(cli: Cli, tmp_path: Path) -> None:
    text = '[delivery]\nqueue_lifetime = "5d"\nretry_initial = 90\n'
    r = cli("config", "check", str(write(tmp_path, text)))
    assert 'queue_lifetime = "5d"' in r.stdout
    assert "retry_initial = 90\n" in r.stdout
    assert 'retry_max = "4h"' in r.stdout  # defaults in their shortest exact unit


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(432000.0, "5d"), (14400.0, "4h"), (300.0, "5m"), (30.0, "30s"), (2.5, "2500ms")],
)
def test_durations_print_in_their_largest_exact_unit(seconds: float, text: str) -> None:
    assert config.format_duration(seconds) == text


def test_example_with_a_data_dir_uncomments_only_that_key(cli: Cli) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtpguard",
            "--data-dir",
            "/var/lib/smtpguard",
            "config",
            "example",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    uncommented = [
        line for line in r.stdout.splitlines() if line and not line.startswith(("#", "["))
    ]
    assert uncommented == ['data_dir = "/var/lib/smtpguard"']


def test_check_fails_on_a_return_path_key_it_cannot_use(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "verp.key"
    text = f'[intake]\nbounce_domain = "bounce.example.com"\nsecret_file = "{key}"\n'
    r = cli("config", "check", str(write(tmp_path, text)))
    assert r.returncode == 2
    assert r.stderr.startswith(f"smtpguard: error: intake.secret_file: cannot read {key}")
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    key.chmod(0o644)
    r = cli("config", "check", str(write(tmp_path, text)))
    assert r.returncode == 2
    assert f"intake.secret_file: {key} is readable by everyone" in r.stderr
    key.chmod(0o600)
    assert cli("config", "check", str(write(tmp_path, text))).returncode == 0


def test_check_fails_on_a_postmark_password_file_it_cannot_read(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "postmark.pw"
    text = f'[webhooks]\npostmark_user = "pm"\npostmark_password_file = "{missing}"\n'
    r = cli("config", "check", str(write(tmp_path, text)))
    assert r.returncode == 2
    assert "webhooks.postmark_password_file: cannot read" in r.stderr


def test_the_milters_sender_rewrite_needs_a_bounce_domain(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "check", str(write(tmp_path, "[milter]\nrewrite_sender = true\n")))
    assert r.returncode == 2
    assert "milter.rewrite_sender needs intake.bounce_domain" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
