"""SIGKILL at any moment: every message answered 250 still reaches the MX (at-least-once)."""

from __future__ import annotations

import random
import smtplib
import threading
import time

import pytest

from tests.fixtures.relay import route_to_mx

pytestmark = pytest.mark.slow

MESSAGES = 600
SENDERS = 4
KILLS = 3


def test_every_accepted_message_survives_repeated_sigkill(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    current = {"relay": start_relay()}
    accepted: set[int] = set()
    lock = threading.Lock()
    todo = list(range(MESSAGES))
    done_sending = threading.Event()

    def sender() -> None:
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            body = f"X-Test-Id: {n}\r\nSubject: crash test {n}\r\n\r\nbody {n}\r\n".encode()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                relay = current["relay"]
                try:
                    with smtplib.SMTP(relay.host, relay.port, local_hostname="c.test",
                                      timeout=10) as s:  # fmt: skip
                        s.sendmail("s@example.org", [f"r{n}@example.com"], body)
                    with lock:
                        accepted.add(n)
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.05)  # relay down or refused: try again, as Postfix would

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    rng = random.Random(4)
    at_kill: list[int] = []
    killed = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.2, 0.6))
        with lock:
            at_kill.append(len(accepted))
        current["relay"].kill()
        killed.append(current["relay"])
        current["relay"] = start_relay()
    for t in threads:
        t.join(timeout=90)
    done_sending.set()
    assert accepted == set(range(MESSAGES))
    assert at_kill[0] < MESSAGES, "the first kill must come while messages are still arriving"

    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen = {_test_id(m.data) for m in list(test_mx.messages)}
        if accepted <= seen:
            break
        time.sleep(0.2)
    missing = accepted - seen
    assert not missing, (
        f"{len(missing)} accepted messages never reached the MX: {sorted(missing)[:20]}"
    )
    received = [_test_id(m.data) for m in list(test_mx.messages)]
    duplicates = len(received) - len(set(received))
    recovered = sum(
        int(line.split("recovered ", 1)[1].split()[0])
        for proc in [*killed, current["relay"]]
        for line in proc.log().splitlines()
        if "recovered " in line and " recipients left in flight" in line
    )
    print(
        f"\ncrash test: {MESSAGES} messages, SIGKILL after {at_kill} accepted, "
        f"{recovered} in-flight recipients recovered, {duplicates} duplicate deliveries"
    )
    # At-least-once: duplicates are bounded by what can be in flight at a kill.
    assert duplicates <= KILLS * 200


def _test_id(data: bytes) -> int:
    for line in data.split(b"\r\n"):
        if line.startswith(b"X-Test-Id: "):
            return int(line.split(b": ", 1)[1])
    return -1
