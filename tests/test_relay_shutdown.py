"""SIGTERM drains: stop accepting, finish what is under way, leave nothing in flight, exit 0."""

from __future__ import annotations

import smtplib
import sqlite3
import threading
import time

import pytest

from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY

pytestmark = pytest.mark.slow


def test_idle_relay_exits_0_on_sigterm(start_relay):
    relay = start_relay()
    started = time.monotonic()
    assert relay.stop(timeout=15) == 0
    assert time.monotonic() - started < 10


def test_sigterm_stops_accepting(start_relay):
    relay = start_relay()
    relay.stop(timeout=15)
    with pytest.raises(OSError):
        smtplib.SMTP(relay.host, relay.port, local_hostname="client.test", timeout=5)


def test_sigterm_under_load_leaves_nothing_in_flight_and_restart_delivers_the_rest(
    start_relay, dns_server, test_mx
):
    route_to_mx(dns_server, "example.com")
    relay = start_relay()
    accepted: list[int] = []
    stop_sending = threading.Event()

    def sender(worker: int) -> None:
        i = 0
        while not stop_sending.is_set() and i < 200:
            try:
                with smtplib.SMTP(relay.host, relay.port, local_hostname="c.test", timeout=10) as s:
                    while not stop_sending.is_set() and i < 200:
                        s.sendmail("s@example.org", [f"w{worker}-{i}@example.com"], BODY)
                        accepted.append(1)
                        i += 1
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert relay.stop(timeout=20) == 0
    stop_sending.set()
    for t in threads:
        t.join(timeout=15)
    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    states = dict(conn.execute("SELECT state, count(*) FROM queue_recipients GROUP BY state"))
    conn.close()
    assert states.get("active", 0) == 0
    assert sum(states.values()) >= len(accepted)
    assert "draining" in relay.log()
    start_relay()  # the same data dir: whatever was still queued goes out now
    test_mx.wait_for(sum(states.values()), timeout=30)


def test_port_in_use_is_a_one_line_error(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "smtpguard", "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path / "var")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith(f"smtpguard: error: cannot listen on 127.0.0.1:{port}:")
    )
    assert "Traceback" not in r.stderr
