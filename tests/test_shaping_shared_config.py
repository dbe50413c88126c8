"""``shaping.shared``: which Redis the fleet's budgets live in, checked when the file is read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from smtpguard import config
from smtpguard.errors import ConfigError
from smtpguard.shaping.budget import LocalBudget
from smtpguard.shaping.factory import make_budget
from smtpguard.shaping.redis_budget import RedisBudget


def load(tmp_path: Path, shaping: str) -> config.Config:
    p = tmp_path / "smtpguard.toml"
    p.write_text(f"[shaping]\n{shaping}\n")
    return config.load(p)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6380/0",
        "redis://redis.internal",
        "rediss://:pw@redis.internal:6380/2",
        "redis://[::1]:6380/1",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=3",
        "rediss://redis.internal:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem",
        "redis://:pw@127.0.0.1:6380/0",
    ],
)
def test_redis_urls_are_accepted(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, f'shared = "{url}"').shaping.shared == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "127.0.0.1:6379",
        "redis://",
        "redis://host:99999/0",
        "redis://host:6379/zero",
        "unix://relative/path",
        "unix:///run/redis/redis.sock?db=x",
        "rediss://redis.internal/0?ssl_cert_reqs=none",
        "redis://redis.internal/0?ssl_ca_certs=/etc/ssl/redis-ca.pem",
    ],
)
def test_anything_else_is_a_one_line_error_naming_the_key(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"smtpguard.toml: shaping.shared: expected a Redis URL"):
        load(tmp_path, f'shared = "{url}"')


def test_the_error_does_not_print_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, 'shared = "redis://:hunter2hunter2@host:6379/x"')
    assert "hunter2" not in str(e.value)
    assert "redis://:********@host:6379/x" in str(e.value)


def test_config_check_masks_the_password(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "smtpguard.toml"
    p.write_text('[shaping]\nshared = "rediss://:hunter2hunter2@redis.internal:6379/0"\n')
    p.chmod(0o600)
    r = cli("--config", str(p), "config", "check")
    assert r.returncode == 0, r.stderr
    assert 'shared = "rediss://:********@redis.internal:6379/0"' in r.stdout
    assert "hunter2" not in r.stdout + r.stderr


def test_a_url_with_a_password_in_a_world_readable_file_is_warned_about(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'shared = "rediss://:hunter2hunter2@redis.internal:6379/0"')
    Path(cfg.source).chmod(0o644)
    (warning,) = config.secret_file_warnings(cfg)
    assert "shaping.shared" in warning and "readable by everyone" in warning


def test_the_local_budget_is_chosen_without_shared(tmp_path: Path) -> None:
    assert isinstance(make_budget(load(tmp_path, "")), LocalBudget)


async def test_the_redis_budget_is_chosen_with_shared_and_its_settings(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'shared = "redis://127.0.0.1:6380/3"\nshared_timeout = "50ms"\nfallback_share = 0.25',
    )
    budget = make_budget(cfg)
    assert isinstance(budget, RedisBudget)
    assert (budget.url, budget.timeout, budget.fallback_share) == (
        "redis://127.0.0.1:6380/3",
        0.05,
        0.25,
    )
    await budget.aclose()


@pytest.mark.parametrize("share", ["0", "1.5", "-0.5"])
def test_fallback_share_is_a_share_of_at_most_one(tmp_path: Path, share: str) -> None:
    with pytest.raises(ConfigError, match=r"shaping.fallback_share: expected a share"):
        load(tmp_path, f"fallback_share = {share}")


def test_a_password_is_not_sent_in_clear_text_to_another_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"shaping.shared: expected rediss:// .* clear text"):
        load(tmp_path, 'shared = "redis://:hunter2hunter2@10.0.0.5:6379/0"')


def test_without_the_fleet_extra_shared_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load(tmp_path, 'shared = "redis://127.0.0.1:6380/0"')
    for name in [m for m in sys.modules if m.partition(".")[0] == "redis"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if redis-py were not installed
    monkeypatch.delitem(sys.modules, "smtpguard.shaping.redis_budget")
    with pytest.raises(ConfigError, match=r"shaping.shared needs the redis package .*\[fleet\]"):
        make_budget(cfg)


async def test_the_global_cap_and_dsns_stay_this_nodes_own(tmp_path: Path) -> None:
    budget = make_budget(load(tmp_path, 'shared = "redis://127.0.0.1:6380/3"'))
    assert isinstance(budget, RedisBudget)
    assert budget.local_keys == {"*global*", "dsn"}
    await budget.aclose()
