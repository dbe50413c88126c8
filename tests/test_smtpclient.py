"""The outbound SMTP client against real servers on loopback: transactions and pipelining.

aiosmtpd-based servers (``make_test_mx``) for well-behaved next hops, the raw
scripted server (``raw_smtp``) for what aiosmtpd will not do (354 to DATA with
no recipient, a dropped connection mid-group). Hostile servers and timeouts
are in test_smtpclient_hostile.py, TLS and AUTH in test_smtpclient_tls.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from smtpguard.relay.smtpclient import (
    ConnectionLost,
    Envelope,
    Recipient,
    RecipientResult,
    SMTPClient,
    TransactionResult,
)
from tests.fixtures.mx import TestMx, WireEvent
from tests.fixtures.rawsmtp import RawConnection, RawServer
from tests.fixtures.smtpclient import envelope, make_client

BODY = b"From: a@origin.test\r\nSubject: test\r\n\r\nHello.\r\n"

MakeMx = Callable[..., TestMx]
RawSmtp = Callable[..., Any]


async def _opened(port: int, **kwargs: Any) -> SMTPClient:
    client = make_client(port, **kwargs)
    hs = await client.open()
    assert hs.ok, hs
    return client


def _by_address(result: TransactionResult) -> dict[str, RecipientResult]:
    return {r.recipient.address: r for r in result.recipients}


def _client_turns(events: list[WireEvent]) -> list[bytes]:
    """What the client sent in each of its turns (a turn ends when the server answers)."""
    turns: list[bytes] = []
    last = ""
    for e in events:
        if e.side == "client":
            if last == "client":
                turns[-1] += e.data
            else:
                turns.append(e.data)
        last = e.side
    return turns


def _transaction_turns(mx: TestMx) -> list[bytes]:
    """The client's turns from its first MAIL FROM to QUIT, on the first connection."""
    turns = _client_turns([e for e in mx.wire if e.connection == 1])
    first = next(i for i, t in enumerate(turns) if t.startswith(b"MAIL FROM"))
    return [t for t in turns[first:] if t != b"QUIT\r\n"]


# ----------------------------------------------------------------------------- pipelining


async def test_pipelined_group_reaches_the_server_in_one_read_before_any_reply(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test", "c@x.test"), BODY)
    await client.quit()

    assert result.pipelined
    assert all(r.delivered for r in result.recipients)
    turns = _transaction_turns(mx)
    # Two round trips per message: the group (MAIL, 3 x RCPT, DATA), then the body.
    assert turns == [
        b"MAIL FROM:<sender@origin.test>\r\n"
        b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n",
        BODY + b".\r\n",
    ]


async def test_mixed_rcpt_replies_under_pipelining_give_each_recipient_its_own_result(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    mx.script("b@x.test", "550 5.1.1 <b@x.test>: User unknown")
    mx.script("c@x.test", "452 4.2.2 Mailbox full")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test", "c@x.test", "d@x.test"), BODY)

    got = _by_address(result)
    assert got["a@x.test"].delivered and got["d@x.test"].delivered
    assert got["a@x.test"].reply.text.startswith("2.0.0 Ok: queued as TESTMX")
    assert (got["b@x.test"].stage, got["b@x.test"].reply.code) == ("rcpt", 550)
    assert got["b@x.test"].reply.status == "5.1.1"
    assert (got["c@x.test"].stage, got["c@x.test"].reply.code) == ("rcpt", 452)
    assert result.reusable and result.pipelined
    assert mx.messages[0].rcpt_tos == ["a@x.test", "d@x.test"]


async def test_421_mid_group_keeps_earlier_verdicts_and_softens_the_rest(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    mx.script("b@x.test", "554 5.7.1 <b@x.test>: Relay access denied")
    mx.script("c@x.test", "421 4.7.0 mx.test Service not available, closing channel")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test", "c@x.test", "d@x.test"), BODY)

    got = _by_address(result)
    # The 5xx given before the 421 stays a 5xx: the session dropping later changes nothing.
    assert (got["b@x.test"].reply.code, got["b@x.test"].stage) == (554, "rcpt")
    for address in ("a@x.test", "c@x.test", "d@x.test"):
        assert got[address].reply.code == 421, address
        assert got[address].reply.status == "4.7.0"
        assert not got[address].delivered
    assert not result.reusable and not client.usable
    assert "421" in result.error
    assert mx.messages == []


async def test_421_to_mail_ends_the_session_for_every_recipient_at_the_mail_stage(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    mx.script("sender@origin.test", "421 4.7.0 Too many messages, slow down", stage="mail")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test"), BODY)

    assert [(r.reply.code, r.stage) for r in result.recipients] == [(421, "mail"), (421, "mail")]
    assert not result.reusable


async def test_server_without_pipelining_gets_lockstep_commands_and_the_same_results(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx(pipelining=False)
    mx.script("b@x.test", "550 5.1.1 <b@x.test>: User unknown")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test", "c@x.test"), BODY)
    await client.quit()

    got = _by_address(result)
    assert not result.pipelined
    assert got["a@x.test"].delivered and got["c@x.test"].delivered
    assert (got["b@x.test"].reply.code, got["b@x.test"].stage) == (550, "rcpt")
    # One command per round trip: MAIL, three RCPT, DATA, the body.
    assert _transaction_turns(mx) == [
        b"MAIL FROM:<sender@origin.test>\r\n",
        b"RCPT TO:<a@x.test>\r\n",
        b"RCPT TO:<b@x.test>\r\n",
        b"RCPT TO:<c@x.test>\r\n",
        b"DATA\r\n",
        BODY + b".\r\n",
    ]


async def test_pipelining_can_be_turned_off_by_the_caller(make_test_mx: MakeMx) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port, pipelining=False)
    result = await client.send(envelope("a@x.test", "b@x.test"), BODY)
    assert not result.pipelined and all(r.delivered for r in result.recipients)
    assert len(_transaction_turns(mx)) == 5


async def test_no_recipient_accepted_means_data_refused_no_body_and_rset(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    mx.script("*", "550 5.1.1 User unknown")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test"), b"Subject: secret body\r\n\r\n")

    assert [(r.reply.code, r.stage) for r in result.recipients] == [(550, "rcpt"), (550, "rcpt")]
    assert result.reusable
    sent = mx.client_bytes(1)
    assert b"secret body" not in sent
    assert sent.endswith(b"DATA\r\nRSET\r\n")
    replies = [e.data for e in mx.wire if e.side == "server"]
    assert replies[-2].startswith(b"503") and replies[-1].startswith(b"250")

    mx.script("*", "250 2.1.5 Ok")
    again = await client.send(envelope("a@x.test"), BODY)
    assert again.recipients[0].delivered and mx.connections == 1


async def test_354_without_accepted_recipient_gets_a_lone_dot_never_the_body(
    raw_smtp: RawSmtp,
) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING")
        for prefix in (b"MAIL", b"RCPT", b"DATA"):
            await conn.expect(prefix)
        await conn.send("250 2.1.0 Ok", "550 5.1.1 User unknown", "354 go ahead anyway")
        await conn.expect(b".")
        await conn.send("554 5.5.1 No valid recipients")
        await conn.expect(b"RSET")
        await conn.send("250 2.0.0 Ok")
        await conn.expect(b"QUIT")
        await conn.send("221 2.0.0 Bye")

    raw: RawServer = await raw_smtp(server)
    client = await _opened(raw.port)
    result = await client.send(envelope("a@x.test"), b"Subject: secret body\r\n\r\n")
    await client.quit()

    assert (result.recipients[0].reply.code, result.recipients[0].stage) == (550, "rcpt")
    assert result.reusable
    assert b"secret body" not in raw.received()
    assert raw.connections[0].lines[-3:] == [b".", b"RSET", b"QUIT"]


async def test_refusal_at_the_final_dot_is_a_data_stage_result(make_test_mx: MakeMx) -> None:
    mx = make_test_mx()
    mx.script("a@x.test", "554 5.7.1 Message rejected as spam", stage="data")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test"), BODY)

    assert [(r.reply.code, r.stage) for r in result.recipients] == [(554, "data"), (554, "data")]
    assert result.reusable
    assert mx.client_bytes(1).endswith(b".\r\nRSET\r\n")


async def test_refused_sender_is_a_mail_stage_result_for_every_recipient(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    mx.script("sender@origin.test", "553 5.7.1 Sender address rejected", stage="mail")
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", "b@x.test"), BODY)

    assert [(r.reply.code, r.stage) for r in result.recipients] == [(553, "mail"), (553, "mail")]
    assert result.reusable


async def test_several_messages_share_one_connection_with_rset_only_after_a_failure(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    mx.script("gone@x.test", "550 5.1.1 User unknown")
    client = await _opened(mx.port)
    first = await client.send(envelope("a@x.test", "gone@x.test"), BODY)
    second = await client.send(envelope("gone@x.test"), BODY)
    third = await client.send(envelope("b@x.test"), BODY)
    await client.quit()

    assert first.recipients[0].delivered and second.recipients[0].reply.code == 550
    assert third.recipients[0].delivered
    assert mx.connections == 1 and len(mx.messages) == 2
    assert mx.client_bytes(1).count(b"RSET\r\n") == 1


async def test_connection_dropped_mid_group_gives_soft_results_and_keeps_given_verdicts(
    raw_smtp: RawSmtp,
) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING")
        for _ in range(5):
            await conn.line()
        await conn.send("250 2.1.0 Ok", "250 2.1.5 Ok", "550 5.1.1 User unknown")
        conn.close()

    raw: RawServer = await raw_smtp(server)
    client = await _opened(raw.port)
    result = await client.send(envelope("a@x.test", "b@x.test", "c@x.test"), BODY)

    got = _by_address(result)
    assert (got["b@x.test"].reply.code, got["b@x.test"].stage) == (550, "rcpt")
    for address in ("a@x.test", "c@x.test"):
        reply = got[address].reply
        assert (reply.code, reply.status, reply.synthetic) == (421, "4.4.2", True), address
        assert "connection closed by the server" in reply.text
        assert got[address].stage == "rcpt"
    assert not result.reusable
    with pytest.raises(ConnectionLost, match="not ready"):
        await client.send(envelope("a@x.test"), BODY)


# ----------------------------------------------------------------------------- the message


async def test_body_is_sent_with_crlf_lines_and_dot_stuffing(make_test_mx: MakeMx) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port)
    body = b"Subject: dots\n\n.leading dot\r\n..two dots\rlone CR\n.\nend"
    result = await client.send(envelope("a@x.test"), body)

    assert result.recipients[0].delivered
    assert mx.messages[0].data == (
        b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nlone CR\r\n.\r\nend\r\n"
    )


async def test_large_body_goes_out_under_flow_control(make_test_mx: MakeMx) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port)
    body = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n.y\r\n" * 4000
    result = await client.send(envelope("a@x.test"), body)

    assert result.recipients[0].delivered
    assert mx.messages[0].data == body


async def test_mail_and_rcpt_parameters_are_sent_when_offered(make_test_mx: MakeMx) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port)
    env = Envelope(
        "sender@origin.test",
        (Recipient("José@x.test", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;José@x.test"),),
        size=len(BODY), body_8bit=True, smtputf8=True, ret="HDRS", envid="id+1=x y",
    )  # fmt: skip
    result = await client.send(env, BODY)

    assert result.recipients[0].delivered
    msg = mx.messages[0]
    assert msg.mail_params == {
        "SIZE": str(len(BODY)), "BODY": "8BITMIME", "SMTPUTF8": "", "RET": "HDRS",
        "ENVID": "id+2B1+3Dx+20y",
    }  # fmt: skip
    assert msg.notify("José@x.test") == "SUCCESS,FAILURE"
    assert msg.orcpt("José@x.test") == "rfc822;Jos+C3+A9@x.test"


async def test_non_ascii_address_without_smtputf8_at_the_server_is_refused_before_mail(
    raw_smtp: RawSmtp,
) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING")
        await conn.expect(b"QUIT")
        await conn.send("221 Bye")

    raw: RawServer = await raw_smtp(server)
    client = await _opened(raw.port)
    result = await client.send(envelope("José@x.test", smtputf8=True), BODY)
    await client.quit()

    reply = result.recipients[0].reply
    assert (reply.code, reply.status, reply.synthetic) == (553, "5.6.7", True)
    assert result.recipients[0].stage == "mail" and result.reusable
    assert b"MAIL" not in raw.received()


async def test_message_over_the_advertised_size_is_refused_before_mail(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx(size_limit=1000)
    client = await _opened(mx.port)
    result = await client.send(envelope("a@x.test", size=5000), BODY)

    reply = result.recipients[0].reply
    assert (reply.code, reply.status, result.recipients[0].stage) == (552, "5.3.4", "mail")
    assert b"MAIL" not in mx.client_bytes(1) and result.reusable


async def test_body_awaitable_is_read_while_the_server_answers(make_test_mx: MakeMx) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port)

    async def body() -> bytes:
        await asyncio.sleep(0.01)
        return BODY

    result = await client.send(envelope("a@x.test"), body())
    assert result.recipients[0].delivered and mx.messages[0].data == BODY


async def test_body_unreadable_after_354_closes_the_session_without_delivering(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx()
    client = await _opened(mx.port)

    async def body() -> bytes:
        raise OSError("database is locked")

    result = await client.send(envelope("a@x.test"), body())

    reply = result.recipients[0].reply
    assert (reply.code, reply.status, reply.synthetic) == (421, "4.3.0", True)
    assert "database is locked" in reply.text
    assert not result.reusable
    await asyncio.sleep(0.1)
    assert mx.messages == []


@pytest.mark.parametrize("address", ["a@x.test\r\nRSET", "a@x.test\nDATA", "a\0@x.test"])
def test_addresses_that_could_inject_commands_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Recipient(address)
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Envelope(address, (Recipient("a@x.test"),))


# ----------------------------------------------------------------------------- the handshake


@pytest.mark.parametrize("greeting", ["554 5.7.1 You are not welcome", "421 4.3.2 Busy"])
async def test_non_2xx_greeting_is_returned_as_a_reply(make_test_mx: MakeMx, greeting: str) -> None:
    mx = make_test_mx()
    mx.script("*", greeting, stage="connect")
    client = make_client(mx.port)
    hs = await client.open()

    assert not hs.ok and hs.stage == "connect"
    assert str(hs.reply) == greeting and hs.reply.status == greeting.split()[1]
    assert not client.usable


async def test_ehlo_refused_falls_back_to_helo(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.send("220 old.test SMTP")
        await conn.expect(b"EHLO")
        await conn.send("502 5.5.2 Command not recognized")
        await conn.expect(b"HELO client.test")
        await conn.send("250 old.test")
        await conn.expect(b"MAIL FROM:<sender@origin.test>")
        await conn.send("250 Ok")
        await conn.expect(b"RCPT TO:<a@x.test>")
        await conn.send("250 Ok")
        await conn.expect(b"DATA")
        await conn.send("354 Go")
        await conn.read_data()
        await conn.send("250 Queued")
        await conn.expect(b"QUIT")

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port)
    hs = await client.open()
    assert hs.ok and hs.stage == "helo" and hs.extensions == {}
    result = await client.send(envelope("a@x.test", size=100), BODY)
    await client.quit()
    assert result.recipients[0].delivered and not result.pipelined


async def test_multiline_replies_are_joined_and_ehlo_keywords_parsed(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.send("220-raw.test ESMTP", "220-second line\x07", "220 third line")
        await conn.expect(b"EHLO")
        await conn.send("250-raw.test hello", "250-AUTH=LOGIN", "250-size 1000",
                        "250-X-WEIRD_KEYWORD", "250 8BITMIME")  # fmt: skip
        await conn.expect(b"QUIT")

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port)
    hs = await client.open()
    await client.quit()

    assert hs.greeting.text == "raw.test ESMTP\nsecond line?\nthird line"
    assert hs.extensions == {"auth": "LOGIN", "size": "1000", "8bitmime": ""}
