"""The outbound SMTP client against hostile or broken servers: bounded memory and time.

Every server here is a real TCP server on 127.0.0.1 (``raw_smtp``) saying what
no SMTP server should; the client must end with a precise error, quickly, and
must not buffer what the server keeps sending.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from smtpguard.relay.smtpclient import (
    ConnectFailed,
    ProtocolError,
    ReplyLimits,
    ReplyTimeout,
    Timeouts,
)
from tests.fixtures.net import free_port
from tests.fixtures.rawsmtp import RawConnection, RawServer
from tests.fixtures.smtpclient import envelope, make_client

RawSmtp = Callable[..., Any]

BODY = b"Subject: test\r\n\r\nHello.\r\n"
QUICK = Timeouts(connect=2.0, command=0.3, data=0.3, quit=0.3)


async def _flood(conn: RawConnection, chunk: bytes, *, chunks: int = 100_000) -> int:
    """Send ``chunk`` until the client hangs up (bounded); how many bytes went out."""
    sent = 0
    for _ in range(chunks):
        conn.writer.write(chunk)
        await conn.writer.drain()
        sent += len(chunk)
    return sent


async def test_reply_line_over_the_limit_is_a_protocol_error(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await _flood(conn, b"220 " + b"x" * 65536)  # a greeting line that never ends

    raw: RawServer = await raw_smtp(server)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="reply line longer than 4096 bytes"):
        await make_client(raw.port).open()
    assert time.monotonic() - started < 2


async def test_endless_multiline_reply_stops_at_the_line_limit(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await _flood(conn, b"220-still greeting you\r\n" * 50)

    raw: RawServer = await raw_smtp(server)
    with pytest.raises(ProtocolError, match="reply longer than 100 lines"):
        await make_client(raw.port).open()


async def test_reply_over_the_byte_limit_is_a_protocol_error(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.send(*["220-" + "y" * 1000] * 40, "220 done")

    raw: RawServer = await raw_smtp(server)
    limits = ReplyLimits(max_line=2048, max_lines=100, max_reply=16384)
    with pytest.raises(ProtocolError, match="reply larger than 16384 bytes"):
        await make_client(raw.port, limits=limits).open()


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"hello there\r\n", "not an SMTP reply line: 'hello there'"),
        (b"\x00\x01\x02\r\n", "not an SMTP reply line"),
        (b"620 six hundred\r\n", "not an SMTP reply line: '620 six hundred'"),
        (b"22\r\n", "not an SMTP reply line: '22'"),
        (b"220+what\r\n", "not an SMTP reply line"),
        (b"220-first\r\n250 second\r\n", "reply code changed from 220 to 250 mid-reply"),
    ],
)
async def test_garbage_is_a_protocol_error(raw_smtp: RawSmtp, greeting: bytes, error: str) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.send(greeting)
        await conn.drain_input()

    raw: RawServer = await raw_smtp(server)
    with pytest.raises(ProtocolError, match=error.replace("+", r"\+")):
        await make_client(raw.port).open()


async def test_silent_server_times_out_at_the_greeting(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.drain_input(timeout=10)

    raw: RawServer = await raw_smtp(server)
    started = time.monotonic()
    with pytest.raises(ReplyTimeout, match=r"no reply to the greeting within 0\.3s"):
        await make_client(raw.port, timeouts=QUICK).open()
    assert time.monotonic() - started < 2


async def test_trickled_reply_lines_share_one_deadline(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        for _ in range(50):  # each line well inside the timeout, the reply never complete
            await conn.send("220-still here")
            await asyncio.sleep(0.1)

    raw: RawServer = await raw_smtp(server)
    started = time.monotonic()
    with pytest.raises(ReplyTimeout, match="greeting"):
        await make_client(raw.port, timeouts=QUICK).open()
    assert time.monotonic() - started < 1.5


async def test_server_silent_after_mail_gives_soft_results_after_the_timeout(
    raw_smtp: RawSmtp,
) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING")
        await conn.expect(b"MAIL")
        await conn.send("250 2.1.0 Ok")
        await conn.drain_input(timeout=10)

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port, timeouts=QUICK)
    assert (await client.open()).ok
    started = time.monotonic()
    result = await client.send(envelope("a@x.test", "b@x.test"), BODY)

    assert time.monotonic() - started < 2
    for r in result.recipients:
        assert (r.reply.code, r.reply.status, r.reply.synthetic) == (421, "4.4.2", True)
        assert "no reply to RCPT TO within 0.3s" in r.reply.text and r.stage == "rcpt"
    assert not result.reusable and not client.usable


async def test_server_silent_after_the_final_dot_gives_soft_results(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING")
        await conn.take_message()
        await conn.drain_input(timeout=10)

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port, timeouts=QUICK)
    assert (await client.open()).ok
    result = await client.send(envelope("a@x.test"), BODY)

    r = result.recipients[0]
    assert (r.reply.code, r.stage, r.reply.synthetic) == (421, "data", True)
    assert "no reply to end of data within 0.3s" in r.reply.text


async def test_unsolicited_replies_make_the_session_unusable(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING")
        await conn.take_message()
        await conn.send("250 2.0.0 Queued", "250 2.0.0 and an extra reply")
        await conn.drain_input()

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port)
    assert (await client.open()).ok
    result = await client.send(envelope("a@x.test"), BODY)
    await asyncio.sleep(0.05)

    assert result.recipients[0].delivered
    assert not client.usable  # out of step with the server: never reused


async def test_refused_connection_is_connect_failed() -> None:
    client = make_client(free_port())  # nothing listens there
    with pytest.raises(ConnectFailed, match=re.escape("connect to mx.test[127.0.0.1]")) as info:
        await client.open()
    assert info.value.status == "4.4.1"


async def test_a_flood_of_unread_replies_pauses_reading_instead_of_buffering(
    raw_smtp: RawSmtp,
) -> None:
    total = 64 * 1024 * 1024
    sent = 0

    async def server(conn: RawConnection) -> None:
        nonlocal sent
        await conn.send("220 raw.test ESMTP")
        await conn.expect(b"EHLO")
        chunk = (b"250 " + b"x" * 3994 + b"\r\n") * 16  # long lines: cheap to parse
        while sent < total:
            conn.writer.write(chunk)
            await conn.writer.drain()  # blocks once the client stops reading
            sent += len(chunk)

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port)
    hs = await client.open()  # the first "250 Ok" is taken as the EHLO reply
    await asyncio.sleep(1)

    assert hs.ok and not client.usable  # replies nobody asked for: never reused
    assert sent < total / 2  # the rest waits in the server (and kernel buffers), not in us
    await client.quit()
