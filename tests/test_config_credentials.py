"""Smarthost credentials in the config: verified TLS only, never printed, not world-readable."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard import config
from smtpguard.errors import ConfigError
from tests.fixtures.certs import CertAuthority, openssl_fingerprint, self_signed

Cli = Callable[..., subprocess.CompletedProcess[str]]

PASSWORD = "hunter2-Secret"
CREDENTIALS = (
    '[delivery]\nsmarthost = "relay.example:587"\nsmarthost_user = "u"\n'
    f'smarthost_password = "{PASSWORD}"\n'
)


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "smtpguard.toml"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_credentials_make_required_tls_the_default(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, CREDENTIALS))
    assert cfg.delivery.smarthost_tls == ""
    assert cfg.delivery.smarthost_tls_mode == "required"


def test_without_credentials_the_smarthost_stays_opportunistic() -> None:
    assert config.Config().delivery.smarthost_tls_mode == "opportunistic"


@pytest.mark.parametrize("mode", ["opportunistic", "none"])
def test_check_refuses_unverified_tls_with_credentials(cli: Cli, tmp_path: Path, mode: str) -> None:
    p = write(tmp_path, CREDENTIALS + f'smarthost_tls = "{mode}"\n')
    r = cli("config", "check", str(p))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"delivery.smarthost_tls: '{mode}' with delivery.smarthost_user set" in r.stderr
    assert PASSWORD not in r.stderr + r.stdout


def test_the_relay_refuses_to_start_with_credentials_over_unverified_tls(
    cli: Cli, tmp_path: Path
) -> None:
    p = write(tmp_path, CREDENTIALS + 'smarthost_tls = "opportunistic"\n')
    r = cli("--config", str(p), "serve")
    assert r.returncode == 2 and "delivery.smarthost_tls" in r.stderr


def test_check_masks_the_password(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "check", str(write(tmp_path, CREDENTIALS)))
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    assert f'smarthost_password = "{config.MASK}"' in r.stdout
    assert 'smarthost_user = "u"' in r.stdout


def test_a_badly_typed_secret_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(write(tmp_path, "[delivery]\nsmarthost_password = 123456789\n"))
    assert "123456789" not in str(caught.value) and "(hidden)" in str(caught.value)


def test_every_secret_looking_key_is_masked() -> None:
    """Any key named like a secret (today's and keys added later) is masked when printed."""
    secret_fields = [
        (table, f) for table, cls in config.SECTIONS.items()
        for f in dataclasses.fields(cls) if config.is_secret(f)
    ]  # fmt: skip
    assert ("delivery", "smarthost_password") in [(t, f.name) for t, f in secret_fields]
    cfg = config.Config()
    values = {}
    for table, f in secret_fields:
        values.setdefault(table, {})[f.name] = "s3cret-value-" + f.name
    cfg = dataclasses.replace(
        cfg, **{t: dataclasses.replace(getattr(cfg, t), **v) for t, v in values.items()}
    )
    shown = config.render(cfg)
    assert "s3cret-value-" not in shown
    assert shown.count(config.MASK) == len(secret_fields)


def test_a_secret_in_a_world_readable_file_is_a_warning(cli: Cli, tmp_path: Path) -> None:
    p = write(tmp_path, CREDENTIALS, mode=0o644)
    r = cli("config", "check", str(p))
    assert r.returncode == 0
    (warning,) = r.stderr.splitlines()
    assert warning.startswith(f"smtpguard: warning: {p}: holds delivery.smarthost_password")
    assert "readable by everyone" in warning and "mode 0644" in warning and "chmod 0600" in warning


def test_a_secret_in_a_file_readable_by_another_group_is_a_warning(
    cli: Cli, tmp_path: Path
) -> None:
    p = write(tmp_path, CREDENTIALS, mode=0o640)
    r = cli("config", "check", str(p))
    import grp

    group = grp.getgrgid(os.stat(p).st_gid).gr_name
    assert group != config.SERVICE_GROUP
    assert f"readable by group {group}" in r.stderr


def test_a_private_file_with_a_secret_is_quiet(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "check", str(write(tmp_path, CREDENTIALS, mode=0o600)))
    assert (r.returncode, r.stderr) == (0, "")


def test_a_readable_file_without_secrets_is_quiet(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "check", str(write(tmp_path, '[relay]\nhostname = "a.test"\n', 0o644)))
    assert (r.returncode, r.stderr) == (0, "")


def test_fingerprint_and_ca_file_are_accepted_with_required(tmp_path: Path) -> None:
    cert = self_signed(tmp_path / "pin", "smarthost.test")
    pin = openssl_fingerprint(cert.cert)
    cfg = config.load(write(tmp_path, CREDENTIALS + f'smarthost_tls_fingerprints = ["{pin}"]\n'))
    assert cfg.delivery.smarthost_tls_fingerprints == [pin]
    ca = CertAuthority(tmp_path / "ca")
    cfg = config.load(write(tmp_path, CREDENTIALS + f'smarthost_tls_ca_file = "{ca.cert}"\n'))
    assert cfg.delivery.smarthost_tls_ca_file == str(ca.cert)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('smarthost_tls_fingerprints = ["abc"]\n', "smarthost_tls_fingerprints: expected SHA-256"),
        (
            'smarthost_tls_ca_file = "/ca.pem"\nsmarthost_tls_fingerprints = ["'
            + "a" * 64
            + '"]\n',
            "choose a CA file or fingerprints",
        ),
    ],
)
def test_impossible_tls_trust_settings_are_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, CREDENTIALS + extra))


def test_a_ca_file_needs_required_tls(tmp_path: Path) -> None:
    text = '[delivery]\nsmarthost_tls = "opportunistic"\nsmarthost_tls_ca_file = "/ca.pem"\n'
    with pytest.raises(
        ConfigError, match=r'delivery.smarthost_tls_ca_file needs smarthost_tls = "required"'
    ):
        config.load(write(tmp_path, text))


def test_check_fails_on_a_ca_file_that_does_not_load(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    r = cli(
        "config", "check", str(write(tmp_path, CREDENTIALS + f'smarthost_tls_ca_file = "{bad}"\n'))
    )
    assert r.returncode == 2
    assert r.stderr.startswith("smtpguard: error: delivery.smarthost_tls_ca_file: cannot load CA")
