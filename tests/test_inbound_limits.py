"""Time, sessions and memory per client are bounded: slowloris, floods, big messages.

The relay's InboundServer runs in-process (see tests/test_inbound.py) with short
limits; clients are raw sockets on loopback, some from 127.0.0.2 (an address
outside ``relay.trusted_networks`` when that is narrowed to 127.0.0.1).
"""

from __future__ import annotations

import resource
import select
import smtplib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.test_inbound import HELO, Raw, Running, relay_config, transaction

HOST = "smtpguard.localdomain"


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def make(**relay: object) -> Running:
        r = Running(relay_config(**relay))
        running.append(r)
        return r

    yield make
    for r in running:
        r.close()


class RawFrom(Raw):
    """A raw client from a chosen loopback source address."""

    def __init__(self, port: int, source: str, *, greeting: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                             source_address=(source, 0))  # fmt: skip
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply() if greeting else ""


def elapsed_until_reply(raw: Raw) -> tuple[str, float]:
    t0 = time.monotonic()
    return raw.reply(), time.monotonic() - t0


# --------------------------------------------------------------------------- slowloris


def test_noop_every_few_tenths_does_not_outlive_the_session_deadline(
    start: Callable[..., Running],
) -> None:
    server = start(idle_timeout=0.5, session_deadline=1.5)
    raw = server.raw()
    t0 = time.monotonic()
    raw.cmd("EHLO " + HELO)
    reply = ""
    while time.monotonic() - t0 < 5:  # a NOOP well within the idle timeout, forever
        reply = raw.cmd("NOOP")
        if reply.startswith("421"):
            break
        time.sleep(0.2)
    assert reply == f"421 4.4.2 {HOST} Error: session time limit exceeded"
    assert 1.4 < time.monotonic() - t0 < 3.5
    assert raw.closed()


def test_noop_between_commands_of_a_transaction_does_not_outlive_it_either(
    start: Callable[..., Running],
) -> None:
    server = start(idle_timeout=0.5, session_deadline=1.0)
    raw = server.raw()
    transaction(raw)
    time.sleep(0.4)
    assert raw.cmd("NOOP").startswith("250")
    time.sleep(0.4)
    assert raw.cmd("NOOP").startswith("250")
    reply, waited = elapsed_until_reply(raw)
    assert reply == f"421 4.4.2 {HOST} Error: session time limit exceeded"
    assert waited < 1.0
    assert server.messages == []


def test_message_in_data_at_the_deadline_is_finished_then_the_session_closed(
    start: Callable[..., Running],
) -> None:
    server = start(idle_timeout=2.0, session_deadline=0.6, min_data_rate=10)
    raw = server.raw()
    transaction(raw)
    assert raw.cmd("DATA").startswith("354")
    for _ in range(6):  # through the deadline, fast enough for the data rate
        raw.send(b"a line of the message\r\n")
        time.sleep(0.15)
    raw.send(b".\r\n")
    assert raw.reply().startswith("250 2.0.0")
    assert raw.reply() == f"421 4.4.2 {HOST} Error: session time limit exceeded"
    assert raw.closed()
    assert len(server.messages) == 1


def test_data_trickled_below_the_minimum_rate_is_cut_off(start: Callable[..., Running]) -> None:
    server = start(idle_timeout=1.0, min_data_rate=100)
    raw = server.raw()
    transaction(raw)
    assert raw.cmd("DATA").startswith("354")
    t0 = time.monotonic()
    reply = ""
    while time.monotonic() - t0 < 6:  # one octet every 0.1 s: 10 bytes/s
        try:
            raw.send(b"x")
        except OSError:
            break
        if select.select([raw.sock], [], [], 0.1)[0]:
            reply = raw.reply()
            break
    assert reply == (
        f"421 4.4.2 {HOST} Error: timeout exceeded (message data slower than 100 bytes/s)"
    )
    # A byte every 0.1 s buys 0.01 s: the first idle timeout is about all it gets.
    assert time.monotonic() - t0 < 2.5
    assert server.messages == []


def test_junk_commands_beyond_the_limit_get_421_4_7_0(start: Callable[..., Running]) -> None:
    server = start(junk_command_limit=3)
    raw = server.raw()
    raw.cmd("EHLO " + HELO)
    for cmd in ("NOOP", "RSET", "VRFY x"):
        assert raw.cmd(cmd)[:1] == "2"
    assert raw.cmd("NOOP") == (
        f"421 4.7.0 {HOST} Error: too many NOOP, RSET, VRFY or HELP commands"
    )
    assert raw.closed()


def test_an_accepted_message_restarts_the_junk_count(start: Callable[..., Running]) -> None:
    server = start(junk_command_limit=1)
    raw = server.raw()
    for _ in range(3):  # what a client reusing its connection does: RSET, then a message
        assert raw.cmd("RSET").startswith("250")
        transaction(raw)
        assert raw.cmd("DATA").startswith("354")
        assert raw.cmd(b"Subject: x\r\n\r\nbody\r\n.").startswith("250 2.0.0")
    assert len(server.messages) == 3


def test_sessions_from_one_untrusted_address_are_limited(start: Callable[..., Running]) -> None:
    server = start(max_sessions_per_client=2, trusted_networks=["127.0.0.1/32"])
    first, second = RawFrom(server.port, "127.0.0.2"), RawFrom(server.port, "127.0.0.2")
    server.clients += [first, second]
    third = RawFrom(server.port, "127.0.0.2", greeting=False)
    server.clients.append(third)
    assert third.reply() == f"421 4.7.0 {HOST} Error: too many connections from 127.0.0.2"
    assert third.closed()
    # Another address, and the trusted one (exempt, as Postfix exempts $mynetworks).
    other = RawFrom(server.port, "127.0.0.3")
    server.clients.append(other)
    trusted = [server.raw() for _ in range(4)]
    assert other.greeting.startswith("220") and all(t.greeting.startswith("220") for t in trusted)
    first.cmd("QUIT")
    deadline = time.monotonic() + 5
    while server.server.per_client.get("127.0.0.2", 0) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    again = RawFrom(server.port, "127.0.0.2")
    server.clients.append(again)
    assert again.greeting.startswith("220")


# --------------------------------------------------------------------------- stress


def test_under_stress_idle_sessions_get_the_short_timeout(start: Callable[..., Running]) -> None:
    server = start(max_sessions=10, stress_threshold=0.5, idle_timeout=30,
                   stress_idle_timeout=0.5)  # fmt: skip
    early = [server.raw() for _ in range(4)]
    for raw in early:
        raw.cmd("EHLO " + HELO)
    time.sleep(0.7)  # not under stress yet: the 30 s idle timeout holds
    fifth = server.raw()  # 5 of 10: under stress, idle timeouts shrink at once
    t0 = time.monotonic()
    for raw in [*early, fifth]:
        assert raw.reply() == f"421 4.4.2 {HOST} Error: timeout exceeded"
    assert time.monotonic() - t0 < 2.0


def test_a_new_session_at_the_maximum_takes_the_place_of_the_longest_idle(
    start: Callable[..., Running],
) -> None:
    server = start(max_sessions=3)
    oldest, busy, recent = server.raw(), server.raw(), server.raw()
    transaction(busy)
    recent.cmd("EHLO " + HELO)
    newcomer = server.raw()
    assert newcomer.greeting.startswith("220")
    assert oldest.reply() == f"421 4.7.0 {HOST} Error: too many connections, closing idle session"
    assert oldest.closed()
    assert busy.cmd("DATA").startswith("354")
    assert busy.cmd(b"Subject: x\r\n\r\nstill here\r\n.").startswith("250 2.0.0")
    assert recent.cmd("NOOP").startswith("250")


@pytest.mark.slow
def test_500_idle_sockets_do_not_keep_a_real_transaction_out(start_relay) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    relay = start_relay()  # default limits: max_sessions 200
    idle: list[socket.socket] = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection((relay.host, relay.port), timeout=5))
        t0 = time.monotonic()
        with smtplib.SMTP(relay.host, relay.port, local_hostname=HELO, timeout=10) as s:
            s.ehlo()
            s.mail("s@example.org")
            s.rcpt("r@example.com")
            code, text = s.data(b"Subject: through the flood\r\n\r\nhi\r\n")
        assert code == 250, text
        assert time.monotonic() - t0 < 10
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- memory


def test_message_data_over_the_budget_gets_451_4_3_2(start: Callable[..., Running]) -> None:
    server = start(max_data_in_flight=600_000)
    big = server.raw()
    transaction(big)
    assert big.cmd("DATA").startswith("354")
    big.send(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 500)
    deadline = time.monotonic() + 5
    while server.server.in_flight < 256 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Declared too big for what is left: refused at MAIL, before any data.
    other = server.raw()
    other.cmd("EHLO " + HELO)
    refused = f"451 4.3.2 {HOST} Error: too much message data in progress, try again later"
    assert other.cmd("MAIL FROM:<a@example.com> SIZE=400000") == refused
    # Undeclared: read, counted, refused after its end, nothing kept.
    assert other.cmd("MAIL FROM:<a@example.com>").startswith("250")
    assert other.cmd("RCPT TO:<b@example.net>").startswith("250")
    assert other.cmd("DATA").startswith("354")
    assert other.cmd(b"Subject: second\r\n\r\n" + (b"z" * 998 + b"\r\n") * 400 + b".") == refused
    # The first message fits once the second is gone, and is accepted whole.
    assert big.cmd(b".").startswith("250 2.0.0")
    assert len(server.messages) == 1 and len(server.messages[0].data) > 500_000
    deadline = time.monotonic() + 5
    while server.server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.in_flight == 0
    # Room again: the same message goes through now.
    assert other.cmd("MAIL FROM:<a@example.com> SIZE=400000").startswith("250")


def test_budget_is_returned_when_a_client_drops_mid_data(start: Callable[..., Running]) -> None:
    server = start(max_data_in_flight=300_000)
    raw = server.raw()
    transaction(raw)
    assert raw.cmd("DATA").startswith("354")
    raw.send((b"y" * 998 + b"\r\n") * 400)
    deadline = time.monotonic() + 5
    while server.server.in_flight < 256 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.in_flight >= 256 * 1024
    raw.close()
    deadline = time.monotonic() + 5
    while server.server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.in_flight == 0


def test_after_a_long_data_transfer_the_client_gets_a_full_idle_timeout(
    start: Callable[..., Running],
) -> None:
    server = start(idle_timeout=0.6, min_data_rate=50)
    raw = server.raw()
    transaction(raw)
    assert raw.cmd("DATA").startswith("354")
    for _ in range(8):  # 1.2 s of data, twice the idle timeout, at about 55 bytes/s
        raw.send(b"12345678\r\n")
        time.sleep(0.15)
    assert raw.cmd(b".").startswith("250 2.0.0")
    time.sleep(0.4)  # idle, but for less than the idle timeout since the reply
    assert raw.cmd("NOOP").startswith("250")


def test_an_untrusted_newcomer_never_displaces_a_trusted_client(
    start: Callable[..., Running],
) -> None:
    server = start(max_sessions=2, trusted_networks=["127.0.0.1/32"])
    trusted = [server.raw(), server.raw()]  # idle, from the trusted address
    stranger = RawFrom(server.port, "127.0.0.2", greeting=False)
    server.clients.append(stranger)
    assert stranger.reply() == f"421 4.7.0 {HOST} Error: too many connections"
    assert all(t.cmd("NOOP").startswith("250") for t in trusted)
