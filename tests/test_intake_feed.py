"""``smtpguard intake``: stored bounces (Maildir, mbox, stdin) through the listener's pipeline."""

from __future__ import annotations

import asyncio
import mailbox
from pathlib import Path
from typing import Any

import pytest

from smtpguard.intake.verp import SignedVerpCodec
from smtpguard.relay.dsn import DsnRecipient, build_dsn
from smtpguard.store.messages import InboundMessage, Recipient
from smtpguard.store.queue import QueueStore
from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.relay import write_config

DOMAIN = "bounce.example.net"
KEY = b"0123456789abcdef0123456789abcdef"
CORPUS = Path(__file__).parent / "corpus" / "sisimai-dev"


def queue_message(data_dir: Path, recipient: str) -> int:
    """A message as the relay would have queued it (the feed checks tokens against it)."""

    async def run() -> int:
        queue = await QueueStore.open(data_dir)
        try:
            msg = InboundMessage(
                "sender@example.org", (Recipient(recipient),), b"Subject: x\r\n\r\nx\r\n"
            )
            return await queue.enqueue_id(msg)
        finally:
            await queue.close()

    return asyncio.run(run())


def dsn_to(return_path: str, recipient: str) -> bytes:
    report = DsnRecipient(
        address=recipient, orcpt="", action="failed", status="5.1.1",
        diagnostic=f"smtp; 550 5.1.1 <{recipient}>: User unknown", remote_mta="mx.example.com",
        last_attempt=0,
    )  # fmt: skip
    return build_dsn(
        original=b"Subject: x\r\n\r\nx\r\n", mail_from=return_path, envid="", ret="HDRS",
        recipients=[report], reporting_mta="mx.example.com", arrival_date=0,
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path, data_dir: Path, cli: Any) -> Any:
    key = tmp_path / "verp.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    config = write_config(
        tmp_path / "smtpguard.toml",
        {"store": {"data_dir": str(data_dir)},
         "intake": {"bounce_domain": DOMAIN, "secret_file": str(key)}},
    )  # fmt: skip
    codec = SignedVerpCodec(DOMAIN, KEY)
    mid = queue_message(data_dir, "bob@example.com")
    box = mailbox.Maildir(tmp_path / "Maildir")
    box.add(dsn_to(codec.encode(mid, "bob@example.com"), "bob@example.com"))
    box.add(
        dsn_to(codec.encode(mid, "carol@example.com"), "carol@example.com")
    )  # never sent to carol
    box.add(dsn_to(f"b+{'a' * 32}@{DOMAIN}", "dave@example.com"))  # a forged token
    box.add((CORPUS / "arf-02.eml").read_bytes())
    box.add((CORPUS / "rfc3834-01.eml").read_bytes())
    box.add(b"Subject: hello\r\n\r\njust mail\r\n")

    def run(*args: str, **kw: Any) -> Any:
        return cli("--config", str(config), "intake", *args, **kw)

    run.maildir = tmp_path / "Maildir"  # type: ignore[attr-defined]
    run.data_dir = data_dir  # type: ignore[attr-defined]
    return run


def lookup(data_dir: Path, address: str) -> Any:
    with SuppressionStore.open(data_dir) as store:
        return store.lookup(address)


def test_dry_run_says_what_would_change_and_writes_nothing(setup: Any) -> None:
    r = setup("--dry-run", str(setup.maildir))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any("bob@example.com: would suppress (dsn-verified" in line for line in lines)
    assert any(
        "carol@example.com: would record only (dsn-unverified" in line and "unknown-message" in line
        for line in lines
    )
    assert any(
        "dave@example.com: would record only" in line and "malformed" in line for line in lines
    )
    # The corpus report carries none of our signed return paths: anyone could have sent it.
    assert any("would record only (arf-unverified" in line for line in lines)
    assert any("ignored (vacation" in line for line in lines)
    assert any(line.endswith(": not a bounce") for line in lines)
    assert "would feed 6 messages" in r.stderr
    assert lookup(setup.data_dir, "bob@example.com") is None


def test_feed_suppresses_only_what_a_signed_return_path_names(setup: Any) -> None:
    r = setup(str(setup.maildir))
    assert r.returncode == 0, r.stderr
    bob = lookup(setup.data_dir, "bob@example.com")
    assert bob is not None and (bob.reason, bob.evidence) == ("userunknown", "dsn-verified")
    assert lookup(setup.data_dir, "carol@example.com") is None
    assert lookup(setup.data_dir, "dave@example.com") is None
    # An ARF report not tied to our send is recorded, never enforced.
    assert lookup(setup.data_dir, "this-local-part-does-not-exist-on-yahoo@yahoo.com") is None


def test_stdin_message(setup: Any) -> None:
    data = (CORPUS / "arf-02.eml").read_text(errors="replace")
    r = setup("-", input=data)
    assert r.returncode == 0, r.stderr
    assert "recorded (arf-unverified: a complaint not tied to our send" in r.stdout


def test_missing_source_is_a_one_line_error(setup: Any, tmp_path: Path) -> None:
    r = setup(str(tmp_path / "nope"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"smtpguard: error: {tmp_path / 'nope'}: no such file or directory"
