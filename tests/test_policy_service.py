"""``smtpguard policy`` over real loopback sockets: the protocol, its limits, its failures.

Each test starts the real command (a subprocess with its own config and SQLite
store) and talks Postfix's policy delegation protocol to it: attribute lines,
an empty line, ``action=...`` and an empty line back, many requests per connection.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.net import free_port
from tests.fixtures.relay import REPO, SUPPRESSED, RelayProcess

pytestmark = pytest.mark.slow

StartService = Callable[..., RelayProcess]


def request(recipient: str, state: str = "RCPT", **extra: str) -> bytes:
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.1",
        "helo_name": "mx.example.org",
        "sender": "alice@example.org",
        "recipient": recipient,
        **extra,
    }
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


class PolicyClient:
    """One Postfix-like connection: send a request, read one ``action=`` reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        while b"\n\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unanswered {self.buffer!r}")
            self.buffer += chunk
        reply, _, self.buffer = self.buffer.partition(b"\n\n")
        assert reply.startswith(b"action="), reply
        return reply[len(b"action=") :].decode()

    def ask(self, data: bytes) -> str:
        self.send(data)
        return self.reply()

    def closed_by_server(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def store(suppressed_store: SuppressionStore) -> SuppressionStore:
    return suppressed_store


@pytest.fixture
def policy(start_service: StartService, store: SuppressionStore) -> RelayProcess:
    return start_service("policy", policy_service={"listen": f"127.0.0.1:{free_port()}"})


def test_a_suppressed_recipient_gets_a_numeric_reject_with_the_relays_text(
    policy: RelayProcess, store: SuppressionStore
) -> None:
    entry = store.lookup(SUPPRESSED)
    assert entry is not None
    action = PolicyClient(policy.port).ask(request(SUPPRESSED))
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(entry.first_seen)))
    assert action == (
        f"550 5.1.1 recipient suppressed by smtpguard: userunknown since {since}"
        " (550 5.1.1 <bob@example.com>: User unknown)"
    )


def test_the_lookup_normalises_the_recipient(policy: RelayProcess) -> None:
    assert PolicyClient(policy.port).ask(request("<Bob@EXAMPLE.com>")).startswith("550 5.1.1 ")


def test_any_other_recipient_gets_dunno(policy: RelayProcess) -> None:
    assert PolicyClient(policy.port).ask(request("carol@example.com")) == "DUNNO"


def test_requests_outside_rcpt_get_dunno(policy: RelayProcess) -> None:
    client = PolicyClient(policy.port)
    assert client.ask(request(SUPPRESSED, state="DATA")) == "DUNNO"
    assert client.ask(request("", state="RCPT")) == "DUNNO"


def test_one_connection_serves_many_requests(policy: RelayProcess) -> None:
    client = PolicyClient(policy.port)
    for i in range(200):
        rcpt = SUPPRESSED if i % 2 else f"user{i}@example.com"
        assert client.ask(request(rcpt)).startswith("550" if i % 2 else "DUNNO")


def test_pipelined_requests_are_answered_in_order(policy: RelayProcess) -> None:
    client = PolicyClient(policy.port)
    client.send(request("a@example.com") + request(SUPPRESSED) + request("c@example.com"))
    assert [client.reply()[:5] for _ in range(3)] == ["DUNNO", "550 5", "DUNNO"]


def test_a_malformed_request_is_answered_and_the_connection_goes_on(policy: RelayProcess) -> None:
    client = PolicyClient(policy.port)
    assert client.ask(b"request=smtpd_access_policy\nthis is not an attribute\n\n") == "DUNNO"
    assert client.ask(b"\x00\xff\xfe garbage\n\n") == "DUNNO"
    assert client.ask(request(SUPPRESSED)).startswith("550 5.1.1 ")
    assert "malformed policy request (line 2: not name=value)" in policy.log()


def test_an_oversized_request_is_answered_and_skipped(start_service: StartService, store) -> None:
    policy = start_service(
        "policy", policy_service={"listen": f"127.0.0.1:{free_port()}", "max_request_size": 1024}
    )
    client = PolicyClient(policy.port)
    big = request(SUPPRESSED, ccert_subject="x" * 5000)
    assert client.ask(big) == "DUNNO"
    endless = b"request=smtpd_access_policy\n" + b"y=" + b"z" * 100_000 + b"\n\n"
    assert client.ask(endless) == "DUNNO"
    assert client.ask(request(SUPPRESSED)).startswith("550 5.1.1 ")
    assert "request over policy_service.max_request_size (1024 bytes)" in policy.log()


def test_on_error_defer_answers_defer_if_permit(start_service: StartService, store) -> None:
    policy = start_service(
        "policy", policy_service={"listen": f"127.0.0.1:{free_port()}", "on_error": "defer"}
    )
    action = PolicyClient(policy.port).ask(b"nonsense\n\n")
    assert action == "DEFER_IF_PERMIT 4.3.0 smtpguard: temporary lookup failure, try again"


def test_tempfail_mode_answers_450_with_the_same_text(start_service: StartService, store) -> None:
    policy = start_service(
        "policy", policy_service={"listen": f"127.0.0.1:{free_port()}", "on_suppressed": "tempfail"}
    )
    action = PolicyClient(policy.port).ask(request(SUPPRESSED))
    assert action.startswith("450 4.1.1 recipient suppressed by smtpguard: userunknown since ")


def test_a_store_that_cannot_be_read_answers_on_error(
    start_service: StartService, store: SuppressionStore
) -> None:
    policy = start_service(
        "policy", policy_service={"listen": f"127.0.0.1:{free_port()}", "on_error": "defer"}
    )
    client = PolicyClient(policy.port)
    assert client.ask(request(SUPPRESSED)).startswith("550 ")
    db = store.path
    store.close()
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            path.write_bytes(b"\x00" * path.stat().st_size)
    assert client.ask(request(SUPPRESSED)).startswith("DEFER_IF_PERMIT 4.3.0 ")
    assert client.ask(request("carol@example.com")).startswith("DEFER_IF_PERMIT 4.3.0 ")


def test_many_concurrent_connections_are_served(policy: RelayProcess) -> None:
    async def one(n: int) -> list[str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", policy.port)
        answers = []
        for i in range(10):
            writer.write(request(SUPPRESSED if (n + i) % 3 == 0 else f"u{n}.{i}@example.com"))
            answers.append((await reader.readuntil(b"\n\n")).decode())
        writer.close()
        await writer.wait_closed()
        return answers

    async def main() -> list[list[str]]:
        return await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(200))), 60)

    results = asyncio.run(main())
    for n, answers in enumerate(results):
        for i, answer in enumerate(answers):
            expected = "action=550 5.1.1 " if (n + i) % 3 == 0 else "action=DUNNO\n\n"
            assert answer.startswith(expected)


def test_an_idle_connection_is_closed(start_service: StartService, store) -> None:
    policy = start_service(
        "policy", policy_service={"listen": f"127.0.0.1:{free_port()}", "idle_timeout": 0.5}
    )
    client = PolicyClient(policy.port)
    assert client.ask(request("a@example.com")) == "DUNNO"
    assert client.closed_by_server(timeout=5)
    assert PolicyClient(policy.port).ask(request("a@example.com")) == "DUNNO"


def test_connections_over_the_limit_are_closed_and_the_others_served(
    start_service: StartService, store
) -> None:
    policy = start_service(
        "policy", policy_service={"listen": f"127.0.0.1:{free_port()}", "max_connections": 3}
    )
    clients = [PolicyClient(policy.port) for _ in range(3)]
    for c in clients:
        assert c.ask(request("a@example.com")) == "DUNNO"
    extra = PolicyClient(policy.port)
    assert extra.closed_by_server(timeout=5)
    assert clients[0].ask(request(SUPPRESSED)).startswith("550 ")
    clients[0].close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot is taken by the next connection
        c = PolicyClient(policy.port)
        try:
            assert c.ask(request("a@example.com")) == "DUNNO"
            break
        except ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert "over policy_service.max_connections" in policy.log()


def test_a_connection_closed_mid_request_leaves_the_service_running(policy: RelayProcess) -> None:
    client = PolicyClient(policy.port)
    client.send(b"request=smtpd_access_policy\nprotocol_state=RC")
    client.close()
    assert PolicyClient(policy.port).ask(request(SUPPRESSED)).startswith("550 ")


def test_sigterm_ends_the_service_with_exit_code_0(policy: RelayProcess) -> None:
    PolicyClient(policy.port)  # an open connection does not hold it up
    policy.proc.send_signal(signal.SIGTERM)
    assert policy.proc.wait(timeout=10) == 0


def test_a_listen_address_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "smtpguard", "--data-dir", str(tmp_path / "var"),
             "policy", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith(f"smtpguard: error: policy_service.listen 127.0.0.1:{port}: ")
    assert "Traceback" not in out.stderr


def test_a_suppressed_recipient_counts_as_a_hit_of_the_list_by_its_evidence(
    start_service: StartService, store: SuppressionStore
) -> None:
    # The relay counts smtpguard_suppression_hits_total{evidence}; so does the service.
    metrics = f"127.0.0.1:{free_port()}"
    policy = start_service(
        "policy",
        policy_service={"listen": f"127.0.0.1:{free_port()}", "metrics_listen": metrics},
    )
    client = PolicyClient(policy.port)
    assert client.ask(request(SUPPRESSED)).startswith("550 5.1.1 ")
    assert client.ask(request("carol@example.com")) == "DUNNO"
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'smtpguard_suppression_hits_total{evidence="rcpt-reply"} 1.0' in text
    assert 'smtpguard_postfix_rejections_total{answer="reject",service="policy"} 1.0' in text
