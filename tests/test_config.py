"""The configuration: defaults, file loading, validation errors, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard import config
from smtpguard.errors import ConfigError
from tests.fixtures.cli import REPO


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "smtpguard.toml"
    p.write_text(text)
    return p


def test_defaults_need_no_file() -> None:
    cfg = config.load(None)
    assert cfg.relay.listen == "127.0.0.1:10025"
    assert cfg.store.data_dir == "./var"


def test_example_file_matches_declarations() -> None:
    assert (REPO / "conf" / "smtpguard.toml").read_text() == config.render_example()


def test_example_file_loads_to_defaults() -> None:
    cfg = config.load(REPO / "conf" / "smtpguard.toml")
    assert cfg == config.Config()


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, "[relay]\nlisten_port = 25\n")
    with pytest.raises(ConfigError, match=r"smtpguard.toml: unknown key relay.listen_port"):
        config.load(p)


def test_unknown_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown table \[relya\]"):
        config.load(write(tmp_path, "[relya]\n"))


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    p = write(tmp_path, '[relay]\nmax_recipients = "many"\n')
    with pytest.raises(ConfigError, match=r"relay.max_recipients: expected an integer"):
        config.load(p)


def test_impossible_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"relay.max_message_size: expected a number greater"):
        config.load(write(tmp_path, "[relay]\nmax_message_size = 0\n"))


def test_bad_network_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"relay.trusted_networks"):
        config.load(write(tmp_path, '[relay]\ntrusted_networks = ["10.0.0.0/33"]\n'))


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        config.load(write(tmp_path, "[relay\n"))


def test_durations_accept_units(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[delivery]\nqueue_lifetime = "2d"\nretry_initial = 90\n'))
    assert cfg.delivery.queue_lifetime == 2 * 86400
    assert cfg.delivery.retry_initial == 90.0


def test_env_selects_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        config.ENV_CONFIG, str(write(tmp_path, '[relay]\nlisten = "127.0.0.1:2526"\n'))
    )
    assert config.load().relay.listen == "127.0.0.1:2526"


def test_data_dir_override_beats_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[store]\ndata_dir = "/srv/a"\n')
    assert config.load(p, data_dir="/srv/b").store.data_dir == "/srv/b"


def test_config_check_prints_effective_config(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = write(tmp_path, '[relay]\nlisten = "127.0.0.1:2527"\n')
    r = cli("--config", str(p), "config", "check")
    assert r.returncode == 0, r.stderr
    assert 'listen = "127.0.0.1:2527"' in r.stdout


def test_config_check_bad_file_is_one_line_exit_2(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = write(tmp_path, "[relay]\nbogus = 1\n")
    r = cli("config", "check", "--config", str(p))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "relay.bogus" in r.stderr


def test_config_check_takes_the_file_as_argument(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = write(tmp_path, '[relay]\nlisten = "127.0.0.1:2528"\n')
    r = cli("config", "check", str(p))
    assert r.returncode == 0, r.stderr
    assert 'listen = "127.0.0.1:2528"' in r.stdout


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[delivery]\nsmarthost = "relay.example:0"\n', "delivery.smarthost"),
        ('[delivery]\nroutes = { "example.com" = "mx.example.net:99999" }\n', "delivery.routes"),
        ('[delivery]\nroutes = { "not a domain" = "mx.example.net" }\n', "delivery.routes"),
        ('[delivery]\nhelo_name = "bad name!"\n', "delivery.helo_name"),
        ("[delivery]\nretry_factor = 0.5\n", "delivery.retry_factor"),
        ('[metrics]\nlisten = "nope"\n', "metrics.listen"),
    ],
)
def test_bad_next_hops_and_names_are_errors_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"smtpguard.toml: {key}: expected"):
        config.load(write(tmp_path, text))


def test_smarthost_may_omit_the_port_or_be_a_bare_ipv6_address(tmp_path: Path) -> None:
    for value in ("relay.example", "2001:db8::1", "[::1]:2525"):
        cfg = config.load(write(tmp_path, f'[delivery]\nsmarthost = "{value}"\n'))
        assert cfg.delivery.smarthost == value


def test_override_error_names_where_the_value_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^--listen: relay.listen: expected HOST:PORT"):
        config.Config().with_overrides(relay={"listen": "nope"}, origin="--listen")


def test_list_type_error_reads_well(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"expected a list of strings, got '127.0.0.1'"):
        config.load(write(tmp_path, '[relay]\ntrusted_networks = "127.0.0.1"\n'))


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[milter]\nlisten = "inet:8891@127.0.0.1"\n', "milter.listen", "inet:HOST:PORT"),
        ('[milter]\nlisten = "unix:relative.sock"\n', "milter.listen", "inet:HOST:PORT"),
        (
            '[milter]\nsocket_mode = "rw-rw----"\n',
            "milter.socket_mode",
            "file permissions in octal",
        ),
        ('[milter]\non_suppressed = "bounce"\n', "milter.on_suppressed", "one of reject"),
        ('[milter]\non_error = "reject"\n', "milter.on_error", "one of accept, tempfail"),
        ('[policy_service]\non_suppressed = "discard"\n', "policy_service.on_suppressed", "one of"),
        ('[policy_service]\non_error = "accept"\n', "policy_service.on_error", "one of dunno"),
        ('[policy_service]\nlisten = "inet:127.0.0.1:1"\n', "policy_service.listen", "HOST:PORT"),
    ],
)
def test_bad_milter_and_policy_settings_are_errors_naming_the_key(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=rf"smtpguard.toml: {key}: expected {expected}"):
        config.load(write(tmp_path, text))


def test_milter_sockets_in_postfix_syntax(tmp_path: Path) -> None:
    assert config.parse_milter_socket("inet:127.0.0.1:8891") == ("inet", "127.0.0.1", 8891)
    assert config.parse_milter_socket("inet:[::1]:8891") == ("inet", "::1", 8891)
    assert config.parse_milter_socket("unix:/run/m.sock") == ("unix", "/run/m.sock", 0)
