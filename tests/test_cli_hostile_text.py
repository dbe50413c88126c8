"""Text from the network, the database or the user is shown as text, never obeyed.

Every command that renders such text gets a value with rich markup (``[/policy]``,
``[bold]``), an ANSI escape sequence (clear screen, set the window title), a C1
control (CSI) and a bidi override: the command must not crash (rich's
MarkupError), must show the brackets as they are, and must not hand a single
terminal control character to the terminal.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from smtpguard.store.messages import InboundMessage, Recipient, RecipientResult
from smtpguard.store.queue import QueueStore
from tests.fixtures.dns import DoctorZones

Cli = Callable[..., subprocess.CompletedProcess[str]]

#: A hostile reply text: markup, ESC sequences (clear screen, window title), a C1
#: CSI, a bidi override, a backspace.
HOSTILE = "550 5.7.1 [/policy] rejected [bold]x \x1b[2J\x1b]0;owned\x07 \x9b31m \u202egnp.exe\b"
#: What must never reach a terminal: C0 controls but tab and newline, DEL, C1, bidi controls.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_shown_safely(r: subprocess.CompletedProcess[str], *, code: int = 0) -> str:
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "MarkupError" not in out, out
    assert r.returncode == code, out
    assert not CONTROL.search(out), [c for c in CONTROL.findall(out)]
    return out


def assert_hostile_text_visible(out: str) -> None:
    assert "[/policy] rejected [bold]x" in out
    assert "\\x1b[2J" in out and "\\x9b31m" in out and "\\u202e" in out


def hostile_queue(data_dir: Path) -> str:
    """A queued message whose attempt got HOSTILE back, with HOSTILE in its history."""

    async def run() -> str:
        store = await QueueStore.open(data_dir)
        try:
            qid = await store.enqueue(
                InboundMessage("s@example.org", (Recipient("r@example.com"),), b"x\r\n")
            )
            message_id = int(qid, 16)
            [claim] = await store.claim([message_id])
            rid = claim.recipients[0].id
            await store.record([
                RecipientResult(
                    rid, message_id, "r@example.com", "queued", "deferred",
                    next_attempt=time.time() + 600, code="550", status="5.7.1",
                    reason="policy", diagnostic=HOSTILE, remote_host="mx[/x].example",
                )
            ])  # fmt: skip
            return qid
        finally:
            await store.close()

    return asyncio.run(run())


def test_queue_show_prints_a_hostile_reply_as_text(cli: Cli, data_dir: Path) -> None:
    qid = hostile_queue(data_dir)
    out = assert_shown_safely(cli("queue", "show", qid))
    assert_hostile_text_visible(out)


def test_queue_list_prints_a_hostile_sender_as_text(cli: Cli, data_dir: Path) -> None:
    hostile_queue(data_dir)
    with sqlite3.connect(data_dir / "smtpguard.db") as conn:
        conn.execute("UPDATE queue_messages SET mail_from = ?", (HOSTILE,))
        conn.execute("UPDATE queue_recipients SET last_reason = ?", ("[/reason]\x1b[31m",))
    out = assert_shown_safely(cli("queue", "list"))
    assert_hostile_text_visible(out)
    out = assert_shown_safely(cli("queue", "stats"))
    assert "[/reason]\\x1b[31m" in out


def test_classify_reply_prints_a_hostile_reply_as_text(cli: Cli) -> None:
    out = assert_shown_safely(cli("classify", "--reply", HOSTILE))
    assert "[/policy] rejected" in out
    out = assert_shown_safely(cli("classify", "--reply", HOSTILE, "--format", "jsonl"))
    assert "[/policy] rejected" in out


def test_suppression_history_shows_a_hostile_note_and_the_evidence_label(cli: Cli) -> None:
    note = "see [/link] \x1b[2J\x9b2J"
    assert cli("suppression", "add", "bob@example.com", "--note", note).returncode == 0
    out = assert_shown_safely(cli("suppression", "history", "bob@example.com"))
    assert "see [/link] \\x1b[2J\\x9b2J" in out
    assert "[manual]" in out  # a bracketed label is text, not a markup tag


def test_suppression_commands_print_hostile_diagnostics_as_text(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text(
        '{"address": "bob@example.com", "reason": "userunknown", "evidence": "rcpt-reply",'
        f' "diagnostic": {_json(HOSTILE)}}}\n'
    )
    assert cli("suppression", "import", str(f)).returncode == 0
    out = assert_shown_safely(cli("suppression", "check", "bob@example.com"))
    assert_hostile_text_visible(out)
    history = assert_shown_safely(cli("suppression", "history", "bob@example.com"))
    assert_hostile_text_visible(history)
    assert "[rcpt-reply]" in history
    assert_shown_safely(cli("suppression", "list"))
    assert_shown_safely(cli("suppression", "stats"))
    # JSON escapes every control character, C1 and bidi included.
    assert_hostile_text_visible(
        assert_shown_safely(cli("suppression", "list", "--format", "json"))
        .replace("\\u001b", "\\x1b")
        .replace("\\u009b", "\\x9b")
    )


def test_an_error_about_hostile_input_is_one_safe_line(cli: Cli) -> None:
    r = cli("suppression", "check", "\x1b[2J[/x]bob\x9b@example.com")
    out = assert_shown_safely(r, code=2)
    assert "\\x1b[2J[/x]" in out


def test_config_check_prints_hostile_values_safely(cli: Cli, tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[relay]\nauth_users_file = "/nonexistent/\\u001b[2J[/x]\\u009b"\n')
    r = cli("config", "check", str(conf))
    out = assert_shown_safely(r, code=2)
    assert "[/x]" in out


def test_logscan_prints_hostile_log_lines_as_text(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "[").mkdir()
    log = tmp_path / "[" / "x]mail.log"  # the path holds "[/x]": a closing markup tag
    line = (
        "Mar  1 10:00:01 mx postfix/smtp[4242]: 4F9D195432: to=<bob@ev[/il].example>,"
        " relay=mx.example.com[192.0.2.1]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=5.7.1,"
        f" status=bounced (host mx.example.com[192.0.2.1] said: {HOSTILE}"
        " (in reply to RCPT TO command))\n"
    )
    log.write_text(line)
    assert_shown_safely(cli("logscan", str(log)))
    assert_shown_safely(cli("logscan", str(log), "--format", "jsonl"))
    # The progress bar (on a terminal) shows the file name: markup there too.
    r = on_terminal(["logscan", str(log)], cwd=tmp_path)
    assert "Traceback" not in r.stdout + r.stderr and r.returncode == 0, r.stderr


def test_doctor_prints_hostile_dns_text_safely(cli: Cli, doctor_dns: DoctorZones) -> None:
    stub = doctor_dns.stub
    # Records as a hostile zone publishes them: markup, ESC, a C1 CSI (UTF-8 c2 9b).
    stub.add("hostile.test", "MX", "10 mail.good.test.")
    stub.add("hostile.test", "TXT", '"v=spf1 ip4:[/x]\\027[2J\\194\\155 -all"')
    stub.add("_dmarc.hostile.test", "TXT", '"v=DMARC1; p=[/x]\\027[2J"')
    stub.add("77.2.0.192.bl.test", "A", "127.0.0.2")
    stub.add("77.2.0.192.bl.test", "TXT", '"listed [/x] \\027[2J \\194\\155 31m"')
    r = cli("doctor", "hostile.test", "--ip", "192.0.2.77", "--dnsbl", DoctorZones.BLOCKLIST,
            "--nameserver", stub.nameserver, "--timeout", "2")  # fmt: skip
    out = assert_shown_safely(r, code=r.returncode)
    assert r.returncode in (1, 3, 4), out
    assert "[/x]" in out


def on_terminal(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI with stderr on a pseudo-terminal (progress bars show)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    env.update(COLUMNS="120", TERM="xterm", SMTPGUARD_CONFIG="/dev/null")
    controller, terminal = pty.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "smtpguard", *args], stdout=subprocess.PIPE,
            stderr=terminal, text=True, timeout=60, env=env, cwd=cwd,
        )  # fmt: skip
    finally:
        os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    r.stderr = b"".join(chunks).decode("utf-8", "replace")
    return r


def _json(text: str) -> str:
    import json

    return json.dumps(text)


def test_report_prints_hostile_database_values_safely(cli: Cli, data_dir: Path) -> None:
    from smtpguard.store import daily
    from smtpguard.store.db import connect

    today = daily.day_of(time.time())
    conn = connect(data_dir)
    daily.add(
        conn,
        {(today, "ev[/x]\x1b[2Jil.example\x9b"): [5, 0, 2, 0, 0]},
        {(today, "bounced", "reason [/policy]\x1b]0;owned\x07"): 2},
        max_domains=500,
    )
    conn.close()
    out = assert_shown_safely(cli("report", "--since", "1d"))
    assert "ev[/x]\\x1b[2Jil.example\\x9b" in out
    assert "reason [/policy]\\x1b]0;owned\\x07" in out
