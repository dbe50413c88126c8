"""``smtpguard queue``: run as a subprocess against a real queue database."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from smtpguard.store.messages import InboundMessage, Recipient
from smtpguard.store.queue import QueueStore
from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY, wait_states


def enqueue(data_dir: Path, *rcpts: str, mail_from: str = "s@example.org") -> str:
    async def run() -> str:
        store = await QueueStore.open(data_dir)
        try:
            return await store.enqueue(
                InboundMessage(
                    mail_from=mail_from,
                    recipients=tuple(Recipient(r) for r in rcpts),
                    data=BODY,
                    received_at=time.time(),
                )
            )
        finally:
            await store.close()

    return asyncio.run(run())


def test_list_shows_pending_messages_as_json(cli, data_dir):
    qid = enqueue(data_dir, "a@example.com", "b@example.net")
    r = cli("queue", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["id"] == qid
    assert row["mail_from"] == "s@example.org"
    assert row["recipients"] == 2
    assert row["states"] == {"queued": 2}


def test_list_table_names_the_message(cli, data_dir):
    qid = enqueue(data_dir, "a@example.com")
    r = cli("queue", "list")
    assert r.returncode == 0, r.stderr
    assert qid in r.stdout and "s@example.org" in r.stdout


def test_show_gives_recipients_and_history(cli, data_dir):
    qid = enqueue(data_dir, "a@example.com")
    r = cli("queue", "show", qid, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["message"]["id"] == qid
    assert [x["address"] for x in doc["recipients"]] == ["a@example.com"]
    assert [e["event"] for e in doc["events"]] == ["received"]


def test_hold_then_release(cli, data_dir):
    qid = enqueue(data_dir, "a@example.com")
    assert cli("queue", "hold", qid).returncode == 0
    doc = json.loads(cli("queue", "show", qid, "--format", "json").stdout)
    assert doc["message"]["held"] is True and doc["recipients"][0]["state"] == "held"
    r = cli("queue", "release", qid, "--format", "json")
    assert json.loads(r.stdout) == {"action": "release", "id": qid, "recipients": 1}
    doc = json.loads(cli("queue", "show", qid, "--format", "json").stdout)
    assert doc["recipients"][0]["state"] == "queued"


def test_delete_removes_the_message_from_the_list(cli, data_dir):
    qid = enqueue(data_dir, "a@example.com")
    assert cli("queue", "delete", qid).returncode == 0
    assert json.loads(cli("queue", "list", "--format", "json").stdout) == []
    listed = json.loads(cli("queue", "list", "--all", "--format", "json").stdout)
    assert listed[0]["states"] == {"deleted": 1}


def test_stats_counts_recipients_by_state(cli, data_dir):
    enqueue(data_dir, "a@example.com", "b@example.com")
    doc = json.loads(cli("queue", "stats", "--format", "json").stdout)
    assert doc["messages_pending"] == 1
    assert doc["recipients"]["queued"] == 2


def test_unknown_id_is_a_one_line_error(cli, data_dir):
    r = cli("queue", "show", "00000000FF")
    assert r.returncode == 2
    assert r.stderr.strip() == "smtpguard: error: no such queue message: 00000000FF"


def test_retry_needs_an_id_or_all(cli, data_dir):
    r = cli("queue", "retry")
    assert r.returncode == 2
    assert "--all" in r.stderr


@pytest.mark.slow
def test_retry_while_the_relay_runs_delivers_now(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    test_mx.script("later@example.com", ["452 4.2.2 Mailbox full", "250 2.1.5 Ok"])
    relay = start_relay(delivery={"retry_initial": 3600.0, "retry_max": 3600.0})
    relay.send("s@example.org", ["later@example.com"], BODY)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the first attempt is recorded as deferred
        (row,) = json.loads(relay.queue_cli("list", "--format", "json").stdout)
        if row["last_reason"] == "mailboxfull":
            break
        time.sleep(0.1)
    assert row["states"] == {"queued": 1}
    r = relay.queue_cli("retry", row["id"])
    assert r.returncode == 0, r.stderr
    test_mx.wait_for(1, timeout=10)
    wait_states(relay.data_dir, {"later@example.com": "delivered"})


def test_queue_list_on_a_mistyped_data_dir_is_an_error(tmp_path: Path) -> None:
    from tests.fixtures.cli import _run

    r = _run(["queue", "list", "--data-dir", str(tmp_path / "nope")])
    assert r.returncode == 2
    assert "no smtpguard database" in r.stderr and "Traceback" not in r.stderr
