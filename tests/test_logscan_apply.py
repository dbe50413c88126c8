"""``smtpguard logscan --apply``: log verdicts reach the suppression list only through the
platform's evidence rules (evidence kind ``log``), against a real SQLite database."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.cli import Background
from tests.fixtures.maillogs import POSTFIX, write_log

Cli = Callable[..., subprocess.CompletedProcess[str]]
T = "2024-03-01T10:{:02d}:{:02d}+00:00 mx postfix/smtp[4242]: "


def bounce(rcpt: str, reply: str, *, minute: int = 0, second: int = 0, cmd: str = "RCPT TO") -> str:
    return (
        T.format(minute, second) + f"4F9D1{minute:02d}{second:02d}A: to=<{rcpt}>,"
        f" relay=mx.example.net[192.0.2.3]:25, delay=1, delays=0.1/0/0.4/0.5, dsn=5.1.1,"
        f" status=bounced (host mx.example.net[192.0.2.3] said: {reply} (in reply to {cmd}"
        " command))"
    )


def sent(rcpt: str, *, minute: int = 0, second: int = 0) -> str:
    return (
        T.format(minute, second) + f"5A2E3{minute:02d}{second:02d}B: to=<{rcpt}>,"
        " relay=mx.example.net[192.0.2.3]:25, delay=1, delays=0.1/0/0.4/0.5, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: queued as 1234)"
    )


def apply(cli: Cli, log: Path) -> dict[str, Any]:
    r = cli("logscan", "--apply", str(log), "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def suppressed(cli: Cli, address: str) -> bool:
    r = cli("suppression", "check", address)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def test_hard_bounce_naming_the_recipient_suppresses_it(cli: Cli, tmp_path: Path) -> None:
    log = write_log(tmp_path / "mail.log", [POSTFIX[0].line])
    assert apply(cli, log)["applied"] == {"suppressed": 1}
    assert suppressed(cli, "bob@example.com")
    history = json.loads(
        cli("suppression", "history", "bob@example.com", "--format", "json").stdout
    )
    assert (history[0]["evidence"], history[0]["actor"]) == ("log", "logscan")
    assert history[0]["note"] == f"logscan {log}"


def test_deferrals_and_session_replies_suppress_nobody(cli: Cli, tmp_path: Path) -> None:
    lines = [s.line for s in POSTFIX if s.status == "deferred"]
    lines.append(bounce("ann@example.net", "550 5.1.1 Sender address rejected", cmd="MAIL FROM"))
    assert apply(cli, write_log(tmp_path / "mail.log", lines))["applied"] == {"ignored": 4}
    assert not suppressed(cli, "ann@example.net")
    assert not suppressed(cli, "carol@example.org")


def test_a_reply_naming_another_address_suppresses_nobody(cli: Cli, tmp_path: Path) -> None:
    line = bounce("dan@example.net", "550 5.1.1 <someone.else@example.net>: User unknown")
    assert apply(cli, write_log(tmp_path / "mail.log", [line]))["applied"] == {"ignored": 1}
    assert not suppressed(cli, "dan@example.net")


def test_an_end_of_data_reply_naming_nobody_suppresses_nobody(cli: Cli, tmp_path: Path) -> None:
    line = bounce("eve@example.net", "550 5.1.1 User unknown", cmd="end of DATA")
    assert apply(cli, write_log(tmp_path / "mail.log", [line]))["applied"] == {"ignored": 1}
    assert not suppressed(cli, "eve@example.net")


def test_a_burst_of_bounces_trips_the_storm_breaker(cli: Cli, tmp_path: Path) -> None:
    lines = [
        bounce(f"u{i}@example.net", f"550 5.1.1 <u{i}@example.net>: User unknown", second=i)
        for i in range(30)
    ]
    applied = apply(cli, write_log(tmp_path / "mail.log", lines))["applied"]
    assert applied == {"suppressed": 10, "pending": 20}


def test_deliveries_in_the_log_count_as_attempts(cli: Cli, tmp_path: Path) -> None:
    lines = [sent(f"ok{i}@example.net", second=i % 60) for i in range(200)]
    lines += [
        bounce(
            f"u{i}@example.net", f"550 5.1.1 <u{i}@example.net>: User unknown", minute=1, second=i
        )
        for i in range(30)
    ]
    summary = apply(cli, write_log(tmp_path / "mail.log", lines))
    assert summary["delivered"] == 200
    assert summary["applied"] == {"suppressed": 30}


def test_log_time_paces_the_storm_breaker(cli: Cli, tmp_path: Path) -> None:
    # 30 bounces spread over 30 minutes are a normal rate, not a burst.
    lines = [
        bounce(f"u{i}@example.net", f"550 5.1.1 <u{i}@example.net>: User unknown", minute=i)
        for i in range(30)
    ]
    assert apply(cli, write_log(tmp_path / "mail.log", lines))["applied"] == {"suppressed": 30}
    history = json.loads(
        cli("suppression", "history", "u29@example.net", "--format", "json").stdout
    )
    assert history[0]["at"] == "2024-03-01T10:29:00Z"


def test_following_applies_each_line_as_it_arrives(data_dir: Path, tmp_path: Path) -> None:
    log = write_log(tmp_path / "mail.log", [])
    f = Background(
        "--data-dir", str(data_dir), "logscan", "--follow", "--apply", "--format", "jsonl", str(log)
    )
    try:
        with open(log, "a") as out:
            out.write(POSTFIX[0].line + "\n")
        assert f.next()["recipient"] == "bob@example.com"
        deadline = time.monotonic() + 15  # applied when the file goes quiet
        while not suppressed_in(data_dir, "bob@example.com"):
            assert time.monotonic() < deadline, "not applied while following"
            time.sleep(0.2)
    finally:
        code, stderr = f.stop()
    assert code == 0, stderr
    assert f.next()["applied"] == {"suppressed": 1}


def suppressed_in(data_dir: Path, address: str) -> bool:
    with SuppressionStore.open(data_dir) as store:
        return store.lookup(address) is not None
