"""``smtpguard doctor`` as an operator runs it: exit status, table, JSON, errors."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.dns import DoctorZones

Z = DoctorZones
Cli = Callable[..., subprocess.CompletedProcess[str]]


def doctor(cli: Cli, zones: DoctorZones, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("doctor", *args, "--nameserver", zones.stub.nameserver, "--timeout", "2")


def test_all_pass_exits_0_with_json_findings(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(
        cli, doctor_dns, "good.test", "--ip", Z.GOOD_IP, "--selector", "s2048",
        "--dnsbl", Z.BLOCKLIST, "--format", "json",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["worst"] == "PASS" and report["exit_code"] == 0
    assert {f["status"] for f in report["findings"]} == {"PASS"}
    assert report["skipped"] == []


def test_warnings_only_exit_1(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(cli, doctor_dns, "good.test", "--selector", "s1024", "--format", "json")
    assert r.returncode == 1, r.stdout
    assert json.loads(r.stdout)["counts"]["WARN"] == 1


def test_a_failure_exits_3(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(cli, doctor_dns, "spf11.test")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "11 DNS lookups" in r.stdout


def test_an_incomplete_check_without_failures_exits_4(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(
        cli, doctor_dns, "good.test", "--ip", Z.GOOD_IP, "--selector", "s2048",
        "--dnsbl", Z.REFUSING_LIST, "--format", "json",
    )  # fmt: skip
    assert r.returncode == 4, r.stdout
    assert json.loads(r.stdout)["worst"] == "ERROR"


def test_table_shows_each_check_with_status_and_fix(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(cli, doctor_dns, "nullmx.test", "--ip", Z.MISMATCH_IP, "--dnsbl", Z.BLOCKLIST)
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    mx = next(line for line in lines if line.lstrip().startswith("mx "))
    assert "FAIL" in mx and "null MX" in mx and "publish MX hosts" in mx
    assert any("PTR mismatch" in line for line in lines)
    assert "nullmx.test: " in r.stdout and "(exit 3)" in r.stdout
    assert "not checked: dkim" in r.stdout
    assert "[/]" not in r.stdout  # statuses are styled, not markup printed as text


def test_listed_ip_is_reported_in_json(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(
        cli, doctor_dns, "good.test", "--ip", Z.LISTED_IP, "--dnsbl", Z.BLOCKLIST,
        "--format", "json",
    )  # fmt: skip
    listed = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "dnsbl:bl.test"]
    assert listed and listed[0]["status"] == "FAIL"
    assert listed[0]["name"] == "66.2.0.192.bl.test"


def test_dead_resolver_is_one_line_and_exit_2(cli: Cli) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        r = cli("doctor", "good.test", "--nameserver", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert r.returncode == 2
    assert r.stderr.startswith("smtpguard: error: DNS resolver 127.0.0.1:")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_bad_ip_is_a_usage_error(cli: Cli, doctor_dns: DoctorZones) -> None:
    r = doctor(cli, doctor_dns, "good.test", "--ip", "300.1.2.3")
    assert r.returncode == 2
    assert r.stderr.strip() == "smtpguard: error: --ip: '300.1.2.3' is not an IP address"


def test_resolver_and_lists_come_from_the_config(
    cli: Cli, doctor_dns: DoctorZones, tmp_path: Path
) -> None:
    conf = tmp_path / "smtpguard.toml"
    conf.write_text(
        f'[delivery]\nnameservers = ["{doctor_dns.stub.nameserver}"]\n'
        f'[doctor]\ndnsbl_zones = ["{Z.BLOCKLIST}"]\ndkim_selectors = ["s2048"]\n'
    )
    r = cli("--config", str(conf), "doctor", "good.test", "--ip", Z.LISTED_IP, "--format", "json")
    report = json.loads(r.stdout)
    assert report["resolver"] == doctor_dns.stub.nameserver
    assert {f["check"] for f in report["findings"]} >= {"dkim:s2048", "dnsbl:bl.test"}
