"""The delivery log of a real relay: one line per recipient attempt, in text and in JSON.

One session exercises every outcome against a scripted MX found through the
loopback DNS: a delivery, a deferral that later expires, a bounce that
suppresses the address, one that does not, the DSNs they cause (and the DSNs'
own deliveries), and a recipient refused at RCPT because it is suppressed.
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.net import free_port
from tests.fixtures.relay import REPO, RelayProcess, route_to_mx
from tests.test_relay_delivery import wait_states

pytestmark = pytest.mark.slow

BODY = b"From: sender@example.org\r\nMessage-ID: <m1@example.org>\r\nSubject: hi\r\n\r\nHi.\r\n"
# A reply with control characters: a terminal escape (cursor up, erase the line) and DEL.
FORGED = "554 5.7.1 Message rejected\tby policy\x1b[1A\x1b[2K\x7f"


def session(start_relay, dns_server, test_mx, relay_dsn_mx, **log: str) -> RelayProcess:
    """Run the session; returns the stopped relay (every line is written by then)."""
    route_to_mx(dns_server, "example.com")
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    test_mx.script("picky@example.com", FORGED)
    test_mx.script("slow@example.com", "452 4.2.2 Mailbox full")
    relay = start_relay(
        delivery={"retry_initial": 0.3, "retry_max": 0.3, "queue_lifetime": 2.0},
        log=log,
    )
    rcpts = ["ok@example.com", "gone@example.com", "picky@example.com", "slow@example.com"]
    relay.send("sender@example.org", rcpts, BODY)
    final = {"ok@example.com": "delivered", "gone@example.com": "bounced",
             "picky@example.com": "bounced", "slow@example.com": "expired"}  # fmt: skip
    wait_states(relay.data_dir, final)
    relay_dsn_mx.wait_for(2, timeout=15)  # one for the bounces, one for the expiry
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        relay.send("sender@example.org", ["gone@example.com"], BODY)
    assert relay.stop() == 0
    return relay


def test_text_lines_for_every_outcome(start_relay, dns_server, test_mx, relay_dsn_mx, tmp_path):
    path = tmp_path / "delivery.log"
    relay = session(start_relay, dns_server, test_mx, relay_dsn_mx, destination="file",
                    file=str(path))  # fmt: skip
    text = path.read_text()
    lines = text.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\S+ \S+ smtpguard/(smtpd|smtp|bounce)\[\d+\]: ", line)
               for line in lines), text  # fmt: skip
    mx = f"mx.example.com[127.0.0.1]:{test_mx.port}"

    def one(pattern: str) -> str:
        found = [line for line in lines if re.search(pattern, line)]
        assert len(found) == 1, (pattern, text)
        return found[0]

    (qid,) = set(re.findall(r"smtpd\[\d+\]: ([0-9A-F]{10}): from=<sender@example.org>", text))
    received = one(r"from=<sender@example.org>, size=\d+")
    assert re.search(r"size=\d+, nrcpt=4, client=unknown\[127\.0\.0\.1\], helo=<client\.test>,"
                     r" message-id=<m1@example\.org>$", received)  # fmt: skip
    delay = r"delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+"
    sent = one(r"to=<ok@example.com>")
    assert re.search(
        rf"smtp\[\d+\]: {qid}: to=<ok@example.com>, relay={re.escape(mx)}, {delay},"
        r" dsn=2\.0\.0, status=sent \(250 .*\)$", sent)  # fmt: skip
    gone = one(r"to=<gone@example.com>, relay")
    assert gone.endswith(
        f"dsn=5.1.1, status=bounced (host {mx.rpartition(':')[0]} said: 550 5.1.1"
        " <gone@example.com>: User unknown (in reply to RCPT TO command)),"
        " reason=userunknown, suppression=suppressed"
    ), gone
    picky = one(r"to=<picky@example.com>")
    assert re.search(r"dsn=5\.7\.1, status=bounced \(host .* said: 554 5\.7\.1 Message rejected"
                     r" by policy\?\[1A\?\[2K\? \(in reply to RCPT TO command\)\),"
                     r" reason=\w+, suppression=ignored$", picky)  # fmt: skip
    deferred = [line for line in lines if "to=<slow@example.com>" in line]
    assert any(re.search(r"dsn=4\.2\.2, status=deferred \(host .* said: 452 4\.2\.2 Mailbox full"
                         r" \(in reply to RCPT TO command\)\), reason=mailboxfull$", line)
               for line in deferred), deferred  # fmt: skip
    assert re.search(r"dsn=5\.4\.7, status=expired \(host .* said: 452 4\.2\.2 Mailbox full"
                     r" \(in reply to RCPT TO command\)\), reason=expired, suppression=ignored$",
                     deferred[-1])  # fmt: skip
    dsns = re.findall(rf"bounce\[\d+\]: {qid}: sender non-delivery notification: ([0-9A-F]{{10}})$",
                      text, re.M)  # fmt: skip
    assert len(dsns) == 2
    for dsn in dsns:
        assert re.search(rf"smtp\[\d+\]: {dsn}: to=<sender@example.org>,"
                         rf" relay=127\.0\.0\.1\[127\.0\.0\.1\]:{relay_dsn_mx.port}, {delay},"
                         r" dsn=2\.0\.0, status=sent", text)  # fmt: skip
    refused = one(r"NOQUEUE")
    assert re.search(r"smtpd\[\d+\]: NOQUEUE: to=<gone@example.com>, from=<sender@example.org>,"
                     r" client=unknown\[127\.0\.0\.1\], helo=<client\.test>, dsn=5\.1\.1,"
                     r" status=suppressed \(550 5\.1\.1 <gone@example\.com>: recipient suppressed"
                     r" by smtpguard: userunknown since .*\), reason=userunknown,"
                     r" evidence=rcpt-reply$", refused)  # fmt: skip
    assert "\r" not in text
    assert "smtpguard/smtp[" not in relay.log()  # the file, not stderr, got the lines


def test_logscan_reads_the_text_log(start_relay, dns_server, test_mx, relay_dsn_mx, tmp_path):
    path = tmp_path / "delivery.log"
    session(start_relay, dns_server, test_mx, relay_dsn_mx, destination="file", file=str(path))
    out = subprocess.run(
        [sys.executable, "-m", "smtpguard", "--config", "/dev/null", "logscan", str(path),
         "--format", "jsonl"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    bounced = {e["recipient"]: e for e in events if e.get("status") == "bounced"}
    assert bounced["gone@example.com"]["stage"] == "rcpt"
    assert bounced["gone@example.com"]["reply"].startswith("550 5.1.1 <gone@example.com>")
    assert any(e.get("recipient") == "slow@example.com" and e.get("status") == "deferred"
               for e in events)  # fmt: skip


def test_json_lines_for_every_outcome(start_relay, dns_server, test_mx, relay_dsn_mx):
    relay = session(start_relay, dns_server, test_mx, relay_dsn_mx, format="json")
    docs = [json.loads(line) for line in relay.log().splitlines()]  # stderr: only JSON
    events: dict[str, list[dict]] = {}
    for d in docs:
        events.setdefault(d.get("event", "relay"), []).append(d)
    (received,) = events["received"]
    assert received["from"] == "sender@example.org"
    assert received["nrcpt"] == 4 and received["size"] > len(BODY)
    assert received["client"] == "unknown[127.0.0.1]"
    assert received["message-id"] == "<m1@example.org>"
    assert received["program"] == "smtpguard/smtpd"
    qid = received["queue_id"]
    by_rcpt: dict[str, list[dict]] = {}
    for d in events["delivery"]:
        by_rcpt.setdefault(d["to"], []).append(d)
    (ok,) = by_rcpt["ok@example.com"]
    assert (ok["queue_id"], ok["status"], ok["dsn"], ok["code"]) == (qid, "sent", "2.0.0", "250")
    assert ok["relay"] == f"mx.example.com[127.0.0.1]:{test_mx.port}"
    parts = ok["delays"]
    assert set(parts) == {"before_queue", "in_queue", "setup", "transmission"}
    assert abs(sum(parts.values()) - ok["delay"]) < 0.01
    (gone,) = by_rcpt["gone@example.com"]
    assert gone["reply"] == "550 5.1.1 <gone@example.com>: User unknown"
    assert (gone["status"], gone["reason"], gone["suppression"], gone["stage"]) == (
        "bounced",
        "userunknown",
        "suppressed",
        "rcpt",
    )
    (picky,) = by_rcpt["picky@example.com"]
    assert picky["suppression"] == "ignored" and picky["suppression_why"]
    assert picky["reply"] == "554 5.7.1 Message rejected by policy?[1A?[2K?"
    slow = by_rcpt["slow@example.com"]
    assert {d["status"] for d in slow} == {"deferred", "expired"}
    assert slow[-1]["status"] == "expired" and slow[-1]["dsn"] == "5.4.7"
    dsns = events["dsn"]
    assert len(dsns) == 2 and {d["to"] for d in dsns} == {"sender@example.org"}
    for d in dsns:
        (delivered,) = [x for x in by_rcpt["sender@example.org"]
                        if x["queue_id"] == d["dsn_queue_id"]]  # fmt: skip
        assert delivered["status"] == "sent" and delivered["kind"] == "dsn"
    (refused,) = events["refused"]
    assert refused["queue_id"] == "NOQUEUE"
    assert (refused["to"], refused["status"], refused["dsn"], refused["evidence"]) == (
        "gone@example.com",
        "suppressed",
        "5.1.1",
        "rcpt-reply",
    )
    assert refused["reply"].startswith("550 5.1.1 <gone@example.com>: recipient suppressed")
    assert any(d.get("message", "").startswith("inbound SMTP listening")
               for d in events["relay"])  # the relay's own lines are JSON too  # fmt: skip


def test_a_log_file_that_cannot_be_opened_is_a_one_line_error(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[store]\ndata_dir = "{tmp_path}/var"\n[relay]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[log]\ndestination = "file"\nfile = "{tmp_path}/no/such/dir/x.log"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "smtpguard", "--config", str(config), "serve"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("smtpguard: error: log.file: cannot open")
    assert "Traceback" not in out.stderr


def test_log_format_option_makes_stderr_json(tmp_path: Path):
    import signal

    config = tmp_path / "c.toml"
    config.write_text(
        f'[store]\ndata_dir = "{tmp_path}/var"\n[relay]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpguard", "--config", str(config), "serve", "--log-format",
         "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("smtpguard: listening on ")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    docs = [json.loads(line) for line in err.splitlines()]
    assert [d["message"] for d in docs][-1] == "stopped"
    assert {d["level"] for d in docs} == {"info"}
