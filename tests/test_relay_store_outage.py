"""The running relay and a database it cannot write to for a while: nothing is stranded.

A second connection holding the write lock stands for another process's long
transaction (a ``suppression import`` of millions of rows).
"""

from __future__ import annotations

import socketserver
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.store.db import connect
from smtpguard.store.messages import InboundMessage, Recipient
from smtpguard.store.queue import insert_message
from tests.fixtures.relay import route_to_mx

BODY = b"Subject: outage\r\n\r\nbody\r\n"


class HeldSmarthost(socketserver.ThreadingTCPServer):
    """A next hop that answers the final dot only when the test says so."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HeldHandler)
        self.got_data = threading.Event()
        self.may_reply = threading.Event()
        self.messages = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _HeldHandler(socketserver.StreamRequestHandler):
    server: HeldSmarthost

    def handle(self) -> None:
        self.request.settimeout(60)
        out = self.wfile
        out.write(b"220 held.test ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.write(b"250-held.test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                out.write(b"354 go\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                self.server.got_data.set()
                self.server.may_reply.wait(60)
                self.server.messages += 1
                out.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                out.write(b"221 bye\r\n")
                return
            else:
                out.write(b"250 2.0.0 Ok\r\n")


@pytest.fixture
def held_smarthost() -> Iterator[HeldSmarthost]:
    server = HeldSmarthost()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.may_reply.set()
    server.shutdown()
    server.server_close()


def hold_write_lock(db: Path, seconds: float) -> threading.Thread:
    taken = threading.Event()

    def run() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert taken.wait(5)
    return t


def recipient_rows(data_dir: Path) -> list[tuple[str, str]]:
    conn = connect(data_dir)
    try:
        return conn.execute("SELECT address, state FROM queue_recipients ORDER BY id").fetchall()
    finally:
        conn.close()


def wait_for_state(data_dir: Path, state: str, timeout: float) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    rows = recipient_rows(data_dir)
    while time.monotonic() < deadline and not all(s == state for _, s in rows):
        time.sleep(0.2)
        rows = recipient_rows(data_dir)
    return rows


@pytest.mark.slow
def test_delivery_result_is_written_after_a_lock_longer_than_every_retry(
    start_relay, held_smarthost: HeldSmarthost, tmp_path: Path
) -> None:
    data_dir = tmp_path / "relay-var"
    relay = start_relay(
        store={"busy_timeout": 0.2},
        delivery={"smarthost": f"127.0.0.1:{held_smarthost.port}", "smarthost_tls": "none",
                  "reclaim_after": 2.0},
    )  # fmt: skip
    code, _ = relay.send("s@example.org", ["r@example.com"], BODY)
    assert code == 250
    assert held_smarthost.got_data.wait(15)
    # The next hop has the message; the relay's result now meets a lock held
    # longer than all of the delivery side's own retries (0.5 + 1 + ... + 8 s).
    holder = hold_write_lock(data_dir / "smtpguard.db", 18.0)
    held_smarthost.may_reply.set()
    holder.join(30)
    rows = wait_for_state(data_dir, "delivered", 15)
    assert rows == [("r@example.com", "delivered")], relay.log()[-2000:]
    time.sleep(3.0)  # longer than reclaim_after: a stranded claim would be sent again
    assert held_smarthost.messages == 1
    assert "trying again until written" in relay.log()


def test_stale_active_recipient_is_queued_again_without_a_restart(
    start_relay, dns_server, test_mx, tmp_path: Path
) -> None:
    route_to_mx(dns_server, "example.com")
    data_dir = tmp_path / "relay-var"
    relay = start_relay(delivery={"reclaim_after": 1.0})
    # A claim whose attempt never wrote its result (the relay process that made it
    # lost it): active for an hour, held by no attempt of the running relay.
    conn = connect(data_dir)
    msg = InboundMessage("s@example.org", (Recipient("stranded@example.com"),), BODY)
    conn.execute("BEGIN IMMEDIATE")
    message_id = insert_message(conn, msg)
    conn.execute(
        "UPDATE queue_recipients SET state = 'active', next_attempt = ? WHERE message_id = ?",
        (time.time() - 3600, message_id),
    )
    conn.execute("COMMIT")
    conn.close()
    [received] = test_mx.wait_for(1, timeout=15)
    assert received.rcpt_tos == ["stranded@example.com"]
    assert wait_for_state(data_dir, "delivered", 10) == [("stranded@example.com", "delivered")]
    assert "queued again" in relay.log()
    assert relay.stop() == 0
