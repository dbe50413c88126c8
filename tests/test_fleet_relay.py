"""Two relays, one PostgreSQL: what one node learns, the other refuses within a second."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.cli import cli_env
from tests.fixtures.relay import REPO, RelayProcess, route_to_mx
from tests.test_relay_delivery import BODY, wait_states

pytestmark = pytest.mark.slow


@pytest.fixture
def mx_domain(dns_server) -> str:
    route_to_mx(dns_server, "example.com")
    return "example.com"


def fleet(dsn: str, node: str, **store: object) -> dict[str, object]:
    return {"backend": "postgresql", "dsn": dsn, "node": node, **store}


def rcpt_reply(relay: RelayProcess, address: str) -> tuple[int, str]:
    """The relay's answer to RCPT TO:<address> (the transaction is then abandoned)."""
    with smtplib.SMTP(relay.host, relay.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        s.mail("sender@example.org")
        code, text = s.rcpt(address)
        s.rset()
        return code, text.decode(errors="replace")


def wait_rcpt(relay: RelayProcess, address: str, code: int, timeout: float) -> float:
    """Seconds until RCPT TO:<address> is answered with ``code`` (AssertionError after timeout)."""
    start = time.monotonic()
    while True:
        got, text = rcpt_reply(relay, address)
        waited = time.monotonic() - start
        if got == code:
            return waited
        assert waited < timeout, f"RCPT {address}: still {got} {text} after {timeout}s"
        time.sleep(0.02)


def wait_listed(data_dir: Path, address: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    with SuppressionStore.open(data_dir) as store:
        while store.lookup(address) is None:
            assert time.monotonic() < deadline, f"{address} not listed in {data_dir}"
            time.sleep(0.01)


def smtpguard(relay: RelayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the relay's node (its configuration: same data dir, same PostgreSQL)."""
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", "--config", str(relay.config_path), *args],
        capture_output=True, text=True, timeout=60, env=cli_env(), cwd=REPO,
    )  # fmt: skip


def test_a_hard_bounce_on_one_node_is_refused_at_rcpt_on_the_other_within_a_second(
    start_relay, tmp_path, pg_dsn, mx_domain, test_mx
):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    a = start_relay(data_dir=tmp_path / "a", store=fleet(pg_dsn, "node-a"))
    b = start_relay(data_dir=tmp_path / "b", store=fleet(pg_dsn, "node-b"))
    assert rcpt_reply(b, "gone@example.com")[0] == 250
    a.send("sender@example.org", ["gone@example.com"], BODY)
    wait_states(a.data_dir, {"gone@example.com": "bounced"})
    wait_listed(a.data_dir, "gone@example.com")
    waited = wait_rcpt(b, "gone@example.com", 550, timeout=5)
    assert waited < 1.0, f"node b refused only after {waited:.2f}s"
    _, text = rcpt_reply(b, "gone@example.com")
    assert "userunknown" in text


def test_a_removal_on_one_node_lifts_the_refusal_on_the_other_and_the_history_shows_both(
    start_relay, tmp_path, pg_dsn, mx_domain, test_mx
):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    a = start_relay(data_dir=tmp_path / "a", store=fleet(pg_dsn, "node-a"))
    b = start_relay(data_dir=tmp_path / "b", store=fleet(pg_dsn, "node-b"))
    a.send("sender@example.org", ["gone@example.com"], BODY)
    wait_rcpt(b, "gone@example.com", 550, timeout=10)
    removed = smtpguard(b, "suppression", "remove", "gone@example.com", "--note", "restored")
    assert removed.returncode == 0, removed.stderr
    waited = wait_rcpt(a, "gone@example.com", 250, timeout=5)
    assert waited < 1.0, f"node a accepted again only after {waited:.2f}s"
    shown = smtpguard(a, "suppression", "history", "gone@example.com", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    steps = [(r["action"], r["node"]) for r in json.loads(shown.stdout)]
    assert steps == [("added", "node-a"), ("removed", "node-b")]


def test_a_manual_add_on_one_node_is_refused_on_the_other_within_a_second(
    start_relay, tmp_path, pg_dsn
):
    a = start_relay(data_dir=tmp_path / "a", store=fleet(pg_dsn, "node-a"))
    b = start_relay(data_dir=tmp_path / "b", store=fleet(pg_dsn, "node-b"))
    added = smtpguard(a, "suppression", "add", "eve@example.net", "--reason", "complaint")
    assert added.returncode == 0, added.stderr
    waited = wait_rcpt(b, "eve@example.net", 550, timeout=5)
    assert waited < 1.0, f"node b refused only after {waited:.2f}s"


def test_a_policy_service_without_a_relay_keeps_its_node_in_sync(
    start_relay, start_service, tmp_path, pg_dsn
):
    from tests.fixtures.net import free_port
    from tests.test_policy_service import PolicyClient, request

    a = start_relay(data_dir=tmp_path / "a", store=fleet(pg_dsn, "node-a"))
    policy = start_service(
        "policy",
        store=fleet(pg_dsn, "node-p", data_dir=str(tmp_path / "p")),
        policy_service={"listen": f"127.0.0.1:{free_port()}"},
    )
    client = PolicyClient(policy.port)
    assert client.ask(request("eve@example.net")) == "DUNNO"
    added = smtpguard(a, "suppression", "add", "eve@example.net", "--reason", "complaint")
    assert added.returncode == 0, added.stderr
    deadline = time.monotonic() + 1.0
    while (action := client.ask(request("eve@example.net"))) == "DUNNO":
        assert time.monotonic() < deadline, "the policy service still answers DUNNO after 1s"
        time.sleep(0.02)
    assert action.startswith("550 5.1.1")
