"""The delivery log's lines: format, sanitising, destinations (a real file, a syslog socket)."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from smtpguard.config import LogConfig
from smtpguard.errors import UserError
from smtpguard.relay.maillog import DeliveryLog, delays, open_delivery_log, seconds
from smtpguard.relay.observe import AttemptRecord, DsnQueued, Received, Timing

FORGERY = "Ok\r\nDec  2 06:46:07 mx postfix/smtp[1]: 0000000009: to=<x@y>, status=sent (250 Ok)"


def attempt(**kw) -> AttemptRecord:
    values = dict(
        qid="000000002A", kind="mail", recipient="bob@example.com", domain="example.com",
        status="bounced", relay="mx.example.com[192.0.2.7]:25", code="550", dsn="5.1.1",
        reply="5.1.1 <bob@example.com>: User unknown", stage="rcpt", reason="userunknown",
        suppression="suppressed", suppression_why="rcpt-reply: 550 5.1.1 userunknown",
        arrived_at=1000.0, received_at=1000.25, timing=Timing(1003.0, 0.5, 1.25),
        finished=1005.0,
    )  # fmt: skip
    values.update(kw)
    return AttemptRecord(**values)  # type: ignore[arg-type]


def written(tmp_path: Path, fmt: str, *calls) -> list[str]:
    """The lines a file delivery log got for ``calls`` (``(method, record)`` pairs)."""
    path = tmp_path / f"delivery-{len(list(tmp_path.iterdir()))}.log"
    dl = open_delivery_log(LogConfig(destination="file", file=str(path), format=fmt))
    for method, arg in calls:
        getattr(dl, method)(arg)
    dl.close()
    return path.read_text().splitlines()


def test_delays_are_postfix_parts_of_the_whole():
    total, a, b, c, d = delays(attempt())
    assert total == 5.0
    assert (a, c, d) == (0.25, 0.5, 1.25)
    assert b == pytest.approx(3.0)  # the commit to this attempt's start, and any waits


def test_durations_are_written_as_postfix_writes_them():
    assert [seconds(x) for x in (0.004, 0.0123, 0.18, 2.44, 9.99, 65.3, 6351.2)] == [
        "0", "0.012", "0.18", "2.4", "10", "65", "6351"]  # fmt: skip


def test_a_bounce_line_has_postfix_fields_then_smtpguards(tmp_path):
    (line,) = written(tmp_path, "text", ("attempts", [attempt()]))
    assert line.endswith(
        f" smtpguard/smtp[{os.getpid()}]: 000000002A: to=<bob@example.com>,"
        " relay=mx.example.com[192.0.2.7]:25, delay=5, delays=0.25/3/0.5/1.2, dsn=5.1.1,"
        " status=bounced (host mx.example.com[192.0.2.7] said: 550 5.1.1 <bob@example.com>:"
        " User unknown (in reply to RCPT TO command)), reason=userunknown, suppression=suppressed"
    )


def test_an_attempt_without_a_connection_logs_relay_none(tmp_path):
    record = attempt(relay="", code="", dsn="4.4.1", status="deferred", reason="networkerror",
                     reply="connect to mx[192.0.2.7]:25: ConnectionRefusedError", timing=None,
                     suppression="ignored")  # fmt: skip
    (line,) = written(tmp_path, "text", ("attempts", [record]))
    assert (
        ", relay=none, delay=5, delays=0.25/4.8/0/0, dsn=4.4.1, status=deferred (connect to" in line
    )
    assert line.endswith("ConnectionRefusedError), reason=networkerror")


def test_a_reply_cannot_forge_a_line(tmp_path):
    record = attempt(status="sent", code="250", dsn="2.0.0", reply=FORGERY, reason="delivered",
                     suppression="ignored")  # fmt: skip
    (text,) = written(tmp_path, "text", ("attempts", [record]))
    assert "status=sent (250 Ok Dec 2 06:46:07 mx postfix/smtp[1]: 0000000009:" in text
    (doc,) = written(tmp_path, "json", ("attempts", [record]))
    assert json.loads(doc)["reply"] == (
        "250 Ok Dec 2 06:46:07 mx postfix/smtp[1]: 0000000009: to=<x@y>, status=sent (250 Ok)"
    )


def test_control_and_bidi_characters_in_client_text_are_neutralised(tmp_path):
    received = Received(
        qid="000000002A", mail_from="a@example.org", size=10, nrcpt=1, client="127.0.0.1",
        helo="evil\x1b[2J\u202ehost", auth_user="", message_id="<id\x00\u2028x@y>",
    )  # fmt: skip
    (line,) = written(tmp_path, "text", ("received", received))
    assert "helo=<evil?[2J?host>, message-id=<id??x@y>" in line


def test_json_lines_carry_the_same_fields(tmp_path):
    (doc,) = written(tmp_path, "json", ("attempts", [attempt()]))
    d = json.loads(doc)
    assert {k: d[k] for k in ("queue_id", "to", "relay", "dsn", "status", "reason",
                              "suppression", "code", "stage", "program", "event")} == {
        "queue_id": "000000002A", "to": "bob@example.com",
        "relay": "mx.example.com[192.0.2.7]:25", "dsn": "5.1.1", "status": "bounced",
        "reason": "userunknown", "suppression": "suppressed", "code": "550", "stage": "rcpt",
        "program": "smtpguard/smtp", "event": "delivery",
    }  # fmt: skip
    assert d["reply"] == "550 5.1.1 <bob@example.com>: User unknown"
    assert d["delay"] == 5.0
    assert d["delays"] == {"before_queue": 0.25, "in_queue": 3.0, "setup": 0.5,
                           "transmission": 1.25}  # fmt: skip


def test_syslog_lines_go_to_the_mail_facility(tmp_path):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        dl = open_delivery_log(LogConfig(destination="syslog", syslog_socket=path))
        dl.dsn(DsnQueued("000000002A", "000000002B", "alice@example.org"))
        dl.close()
        got = server.recv(4096)
        dl = open_delivery_log(LogConfig(destination="syslog", syslog_socket=path, format="json",
                                         syslog_facility="local3"))  # fmt: skip
        dl.dsn(DsnQueued("000000002A", "000000002B", "alice@example.org"))
        dl.close()
        got_json = server.recv(4096)
    finally:
        server.close()
    # <22>: facility mail (2) * 8 + severity info (6), then the tag as Postfix's daemons have it.
    pid = os.getpid()
    assert got == (f"<22>smtpguard/bounce[{pid}]: 000000002A: sender non-delivery notification:"
                   " 000000002B\x00").encode()  # fmt: skip
    prefix = f"<158>smtpguard/bounce[{pid}]: ".encode()  # local3 (19) * 8 + 6
    assert got_json.startswith(prefix)
    doc = json.loads(got_json[len(prefix) :].rstrip(b"\x00"))
    assert (doc["event"], doc["dsn_queue_id"], doc["to"]) == ("dsn", "000000002B",
                                                              "alice@example.org")  # fmt: skip


def test_a_file_destination_needs_a_file():
    with pytest.raises(UserError, match=r"log\.file is empty"):
        open_delivery_log(LogConfig(destination="file"))


def test_lines_beyond_the_queue_are_dropped_and_counted(tmp_path):
    from prometheus_client import REGISTRY

    from smtpguard.relay.maillog import LineWriter

    class Stuck:
        """A destination that takes nothing until released: the line fills up."""

        name = "stuck"

        def __init__(self) -> None:
            import threading

            self.release = threading.Event()

        def write(self, batch) -> None:
            self.release.wait(10)

        def close(self) -> None:
            return None

    def dropped() -> float:
        return REGISTRY.get_sample_value("smtpguard_delivery_log_dropped_total") or 0.0

    stuck = Stuck()
    writer = LineWriter(stuck, capacity=5)  # type: ignore[arg-type]
    dl = DeliveryLog("text", writer)
    before = dropped()
    for _ in range(20):
        dl.dsn(DsnQueued("000000002A", "000000002B", "a@example.org"))
    assert dropped() - before >= 10  # the thread holds a batch of at most 5, five wait
    stuck.release.set()
    dl.close()


def _stderr_lines(tmp_path: Path, journal: bool) -> str:
    """A process writing one delivery-log line to stderr (a file), with JOURNAL_STREAM naming
    that file (as systemd does for the journal's stream) or not."""
    import subprocess
    import sys

    err = tmp_path / f"stderr-{journal}.txt"
    code = (
        "import os, sys\n"
        "st = os.fstat(2)\n"
        "if sys.argv[1] == 'yes': os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from smtpguard.config import LogConfig\n"
        "from smtpguard.relay.maillog import open_delivery_log\n"
        "from smtpguard.relay.observe import DsnQueued\n"
        "dl = open_delivery_log(LogConfig())\n"
        "dl.dsn(DsnQueued('000000002A', '000000002B', 'a@example.org'))\n"
        "dl.close()\n"
    )
    with err.open("w") as f:
        subprocess.run([sys.executable, "-c", code, "yes" if journal else "no"], stderr=f,
                       check=True, timeout=60)  # fmt: skip
    return err.read_text()


def test_stderr_lines_carry_time_and_host_except_in_the_journal(tmp_path):
    plain = _stderr_lines(tmp_path, journal=False)
    assert re.match(r"\d{4}-\d\d-\d\dT\S+ \S+ smtpguard/bounce\[\d+\]: 000000002A: sender", plain)
    journal = _stderr_lines(tmp_path, journal=True)
    assert re.fullmatch(r"smtpguard/bounce\[\d+\]: 000000002A: sender non-delivery"
                        r" notification: 000000002B\n", journal)  # fmt: skip
