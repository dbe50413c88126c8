"""The outbound SMTP client with a real Postfix as the next hop.

Postfix's smtpd advertises PIPELINING and enforces it (it logs and can refuse
"improper command pipelining" from a client that did not wait where it had
to), refuses one address through ``check_recipient_access``, and relays what
it accepts to a test MX, so the bytes the client sent are checked at the far
end too. One Postfix serves the module's tests (starting one takes seconds).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.mx import TestMx
from tests.fixtures.postfix_instance import PostfixInstance
from tests.fixtures.smtpclient import envelope, make_client

REFUSED = "gone@rcpt.test"


@pytest.fixture(scope="module")
def next_hop() -> Iterator[tuple[PostfixInstance, TestMx]]:
    """Postfix on loopback refusing ``REFUSED`` with 550 5.1.1; it relays to a test MX."""
    mx = TestMx().start()
    access = f"inline:{{ {{ {REFUSED} = 550 5.1.1 User unknown }} }}"
    pf = PostfixInstance(
        relayhost=f"127.0.0.1:{mx.port}",
        name="nexthop",
        main={"smtpd_recipient_restrictions": f"check_recipient_access {access}"},
    )
    try:
        pf.start()
        yield pf, mx
    finally:
        pf.remove()
        mx.stop()


def _body(n: int) -> bytes:
    return (
        f"From: sender@origin.test\r\nSubject: message {n}\r\nMessage-ID: <m{n}@origin.test>\r\n"
        f"\r\nLine one of {n}.\r\n.a line starting with a dot\r\n".encode()
    )


async def test_postfix_takes_pipelined_messages_over_one_connection_with_one_refused_recipient(
    next_hop: tuple[PostfixInstance, TestMx],
) -> None:
    pf, mx = next_hop
    client = make_client(pf.port, host=pf.hostname)
    hs = await client.open()
    assert hs.ok and "pipelining" in hs.extensions

    first = await client.send(envelope("a1@rcpt.test"), _body(1))
    second = await client.send(envelope("b1@rcpt.test", REFUSED, "b2@rcpt.test"), _body(2))
    third = await client.send(envelope("c1@rcpt.test"), _body(3))
    await client.quit()

    for result in (first, second, third):
        assert result.pipelined and result.reusable
    assert first.recipients[0].delivered and third.recipients[0].delivered
    b1, gone, b2 = second.recipients
    assert b1.delivered and b2.delivered and "queued as" in b1.reply.text
    assert (gone.reply.code, gone.reply.status, gone.stage) == (550, "5.1.1", "rcpt")

    received = {m.message()["Subject"]: m for m in mx.wait_for(3, timeout=30)}
    assert sorted(received["message 2"].rcpt_tos) == ["b1@rcpt.test", "b2@rcpt.test"]
    assert received["message 3"].data.endswith(b"\r\n.a line starting with a dot\r\n")
    assert "improper command pipelining" not in pf.log()


async def test_postfix_refuses_data_when_no_recipient_was_accepted_and_the_session_goes_on(
    next_hop: tuple[PostfixInstance, TestMx],
) -> None:
    pf, _ = next_hop
    client = make_client(pf.port, host=pf.hostname)
    assert (await client.open()).ok

    refused = await client.send(envelope(REFUSED), _body(4))
    after = await client.send(envelope("d1@rcpt.test"), _body(5))
    await client.quit()

    assert [(r.reply.code, r.stage) for r in refused.recipients] == [(550, "rcpt")]
    assert refused.reusable  # Postfix answered DATA with 554 5.5.1, the client sent RSET
    assert after.recipients[0].delivered
    # Postfix's own count for the session: the refused DATA, the RSET, no body.
    pf.wait_log(r"disconnect from \S+ ehlo=1 mail=2 rcpt=1/2 data=1/2 rset=1 quit=1 ", timeout=10)
    assert "improper command pipelining" not in pf.log()
