"""STARTTLS policy and AUTH in the outbound SMTP client, against real TLS servers on loopback.

Certificates are made by ``openssl`` per test (tests/fixtures/certs.py). What
the server received is checked byte for byte (``TestMx.client_bytes`` is the
decrypted stream after STARTTLS), so "the password was never sent" is an
assertion on the wire, not on the client's intentions.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtpguard.relay.smtpclient import (
    AuthError,
    Credentials,
    InsecureAuthError,
    ProtocolError,
    SMTPClient,
    TLSError,
    TLSRequiredError,
)
from smtpguard.relay.tlspolicy import TLSPolicy, TLSPolicyError, fingerprint, parse_pin
from tests.fixtures.certs import CertAuthority, openssl_fingerprint, self_signed
from tests.fixtures.mx import TestMx
from tests.fixtures.rawsmtp import RawConnection, RawServer
from tests.fixtures.smtpclient import envelope, make_client

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

MakeMx = Callable[..., TestMx]
RawSmtp = Callable[..., Any]

PASSWORD = "s3cret-Pa55"
CREDS = Credentials("relayuser", PASSWORD)
BODY = b"Subject: tls\r\n\r\nOver TLS.\r\n"


def _password_on_the_wire(mx: TestMx) -> bool:
    """The password in any form AUTH PLAIN or LOGIN would carry it."""
    sent = mx.client_bytes()
    plain = base64.b64encode(b"\0relayuser\0" + PASSWORD.encode())
    login = base64.b64encode(PASSWORD.encode())
    return any(s in sent for s in (PASSWORD.encode(), plain, login, b"AUTH"))


def _client(
    mx: TestMx, policy: TLSPolicy, *, name: str = "smarthost.test", **kw: Any
) -> SMTPClient:
    return make_client(mx.port, host=name, tls=policy, **kw)


# ----------------------------------------------------------------------------- required


async def test_required_refuses_a_self_signed_certificate_for_another_name_and_sends_no_password(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx(tls=True, hostname="unrelated.example", auth={"relayuser": PASSWORD})
    client = _client(mx, TLSPolicy("required"), credentials=CREDS)

    with pytest.raises(TLSError, match=re.escape("certificate not trusted for 'smarthost.test'")):
        await client.open()
    assert not _password_on_the_wire(mx)
    assert mx.auth_attempts == [] and not client.usable


async def test_required_refuses_the_right_ca_but_the_wrong_host_name(
    make_test_mx: MakeMx, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path)
    mx = make_test_mx(tls=True, tls_files=ca.issue("other.test"), auth={"relayuser": PASSWORD})
    client = _client(mx, TLSPolicy("required", ca_file=str(ca.cert)), credentials=CREDS)

    with pytest.raises(TLSError, match="Hostname mismatch"):
        await client.open()
    assert not _password_on_the_wire(mx)


async def test_required_accepts_a_certificate_from_the_configured_ca_and_authenticates(
    make_test_mx: MakeMx, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path)
    files = ca.issue("smarthost.test")
    mx = make_test_mx(tls=True, tls_files=files, auth={"relayuser": PASSWORD})
    client = _client(mx, TLSPolicy("required", ca_file=str(ca.cert)), credentials=CREDS)

    hs = await client.open()
    assert hs.ok and hs.authenticated
    assert hs.tls is not None and (hs.tls.verified, hs.tls.method) == (True, "chain")
    result = await client.send(envelope("a@x.test"), BODY)
    await client.quit()

    assert result.recipients[0].delivered and mx.messages[0].tls
    assert mx.auth_attempts == [("PLAIN", "relayuser", True)]


async def test_required_without_a_ca_file_trusts_only_the_system_store(
    make_test_mx: MakeMx, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path)
    mx = make_test_mx(tls=True, tls_files=ca.issue("smarthost.test"))

    with pytest.raises(TLSError, match="certificate not trusted"):
        await _client(mx, TLSPolicy("required")).open()


async def test_required_accepts_a_matching_pin_in_place_of_chain_checks(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx(tls=True, hostname="unrelated.example", auth={"relayuser": PASSWORD})
    assert mx.cert_path is not None
    pin = openssl_fingerprint(mx.cert_path)  # "sha256 Fingerprint=AB:CD:..." as openssl prints it
    client = _client(mx, TLSPolicy("required", pins=(pin,)), credentials=CREDS)

    hs = await client.open()
    await client.quit()
    assert hs.ok and hs.authenticated
    assert hs.tls is not None and (hs.tls.method, hs.tls.peer_sha256) == ("pin", parse_pin(pin))


async def test_required_refuses_a_wrong_pin_and_sends_no_password(
    make_test_mx: MakeMx, tmp_path: Path
) -> None:
    mx = make_test_mx(tls=True, hostname="smarthost.test", auth={"relayuser": PASSWORD})
    other = self_signed(tmp_path, "smarthost.test")  # same name, another certificate
    wrong = fingerprint(ssl.PEM_cert_to_DER_cert(other.cert.read_text()))
    client = _client(mx, TLSPolicy("required", pins=(wrong,)), credentials=CREDS)

    with pytest.raises(TLSError, match="matches no configured pin"):
        await client.open()
    assert not _password_on_the_wire(mx)
    assert b"EHLO" not in mx.client_bytes().split(b"STARTTLS\r\n", 1)[1]


async def test_required_fails_when_starttls_is_not_offered(make_test_mx: MakeMx) -> None:
    mx = make_test_mx(auth={"relayuser": PASSWORD})
    with pytest.raises(TLSRequiredError, match="does not offer STARTTLS") as info:
        await _client(mx, TLSPolicy("required"), credentials=CREDS).open()
    assert info.value.status == "4.7.10"
    assert not _password_on_the_wire(mx)


# ----------------------------------------------------------------------------- credentials


async def test_auth_is_refused_over_plaintext_even_when_the_server_offers_it(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx(auth={"relayuser": PASSWORD})  # AUTH offered, no STARTTLS
    client = _client(mx, TLSPolicy("opportunistic"), credentials=CREDS)

    with pytest.raises(InsecureAuthError, match="over an unencrypted connection"):
        await client.open()
    assert not _password_on_the_wire(mx) and mx.auth_attempts == []


async def test_auth_is_refused_over_opportunistic_tls(make_test_mx: MakeMx) -> None:
    mx = make_test_mx(tls=True, auth={"relayuser": PASSWORD})
    client = _client(mx, TLSPolicy("opportunistic"), credentials=CREDS)

    with pytest.raises(InsecureAuthError, match="over an unverified connection"):
        await client.open()
    assert not _password_on_the_wire(mx)


async def test_auth_login_is_used_when_plain_is_not_offered(
    make_test_mx: MakeMx, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path)
    mx = make_test_mx(
        tls=True, tls_files=ca.issue("smarthost.test"), auth={"relayuser": PASSWORD},
        auth_mechanisms=("LOGIN",),
    )  # fmt: skip
    hs = await _client(mx, TLSPolicy("required", ca_file=str(ca.cert)), credentials=CREDS).open()
    assert hs.ok and hs.authenticated
    assert mx.auth_attempts == [("LOGIN", "relayuser", True)]


async def test_wrong_password_is_a_refusal_at_the_auth_stage(
    make_test_mx: MakeMx, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path)
    mx = make_test_mx(tls=True, tls_files=ca.issue("smarthost.test"), auth={"relayuser": "other"})
    client = _client(mx, TLSPolicy("required", ca_file=str(ca.cert)), credentials=CREDS)

    hs = await client.open()
    assert not hs.ok and hs.stage == "auth" and hs.reply.code == 535
    assert not client.usable


async def test_credentials_without_a_mechanism_we_speak_are_an_error(
    raw_smtp: RawSmtp, tmp_path: Path
) -> None:
    files = self_signed(tmp_path, "smarthost.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.cert, files.key)

    async def server(conn: RawConnection) -> None:
        await conn.greet("STARTTLS")
        await conn.expect(b"STARTTLS")
        await conn.send("220 Go ahead")
        await conn.writer.start_tls(server_ctx)
        await conn.expect(b"EHLO")
        await conn.send("250-raw.test", "250 AUTH CRAM-MD5")
        await conn.drain_input()

    raw: RawServer = await raw_smtp(server)
    policy = TLSPolicy("required", ca_file=str(files.cert))
    client = make_client(raw.port, host="smarthost.test", tls=policy, credentials=CREDS)
    with pytest.raises(AuthError, match="offers CRAM-MD5; we speak AUTH PLAIN and LOGIN"):
        await client.open()
    assert PASSWORD.encode() not in raw.received()


def test_credentials_never_show_the_password() -> None:
    assert PASSWORD not in repr(CREDS) and PASSWORD not in str(CREDS)


# ----------------------------------------------------------------------------- opportunistic


async def test_opportunistic_starttls_forgets_what_it_learned_before_tls(
    make_test_mx: MakeMx,
) -> None:
    mx = make_test_mx(tls=True, auth={"relayuser": PASSWORD})
    client = _client(mx, TLSPolicy("opportunistic"))

    hs = await client.open()
    assert hs.ok and hs.tls is not None and (hs.tls.verified, hs.tls.method) == (False, "none")
    # The second EHLO's keywords only: no STARTTLS any more, AUTH only now.
    assert "starttls" not in hs.extensions and "auth" in hs.extensions
    result = await client.send(envelope("a@x.test"), BODY)
    assert result.recipients[0].delivered and mx.messages[0].tls


async def test_policy_none_never_starts_tls(make_test_mx: MakeMx) -> None:
    mx = make_test_mx(tls=True)
    hs = await _client(mx, TLSPolicy("none")).open()
    assert hs.ok and hs.tls is None and "starttls" in hs.extensions
    assert b"STARTTLS" not in mx.client_bytes()


async def test_opportunistic_handshake_failure_goes_on_in_plaintext_on_a_new_connection(
    raw_smtp: RawSmtp,
) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("PIPELINING", "STARTTLS")
        if len(raw.connections) == 1:
            await conn.expect(b"STARTTLS")
            await conn.send("220 Go ahead")
            await conn.send(b"this is not a TLS server hello\r\n" * 4)
            await conn.drain_input()
            return
        await conn.expect(b"QUIT")
        await conn.send("221 Bye")

    raw: RawServer = await raw_smtp(server)
    client = make_client(raw.port, tls=TLSPolicy("opportunistic"))
    hs = await client.open()
    await client.quit()

    assert hs.ok and hs.tls is None and "TLS handshake" in hs.tls_fallback
    assert len(raw.connections) == 2
    assert b"STARTTLS" not in raw.received(1)


async def test_required_handshake_failure_does_not_fall_back(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("STARTTLS")
        await conn.expect(b"STARTTLS")
        await conn.send("220 Go ahead", b"garbage instead of TLS\r\n")
        await conn.drain_input()

    raw: RawServer = await raw_smtp(server)
    with pytest.raises((TLSError, ProtocolError)):
        await make_client(raw.port, tls=TLSPolicy("required")).open()
    assert len(raw.connections) == 1


async def test_plaintext_injected_after_the_starttls_reply_is_refused(raw_smtp: RawSmtp) -> None:
    async def server(conn: RawConnection) -> None:
        await conn.greet("STARTTLS")
        await conn.expect(b"STARTTLS")
        # One segment: the 220 and a forged reply meant to be read as if it came over TLS.
        await conn.send(b"220 Go ahead\r\n250 AUTH PLAIN\r\n")
        await conn.drain_input()

    raw: RawServer = await raw_smtp(server)
    with pytest.raises(ProtocolError, match="sent data after its STARTTLS reply"):
        await make_client(raw.port, tls=TLSPolicy("required")).open()


# ----------------------------------------------------------------------------- the policy itself


def test_pins_are_read_in_the_forms_operators_paste() -> None:
    hexpin = "ab" * 32
    colons = ":".join(["AB"] * 32)
    for text in (hexpin, colons, f"sha256 Fingerprint={colons}", f"sha256:{hexpin}"):
        assert parse_pin(text) == hexpin
    with pytest.raises(TLSPolicyError, match="not a SHA-256 certificate fingerprint"):
        parse_pin("ab" * 20)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "verify"}, "TLS mode must be one of none, opportunistic, required"),
        ({"mode": "opportunistic", "pins": ("ab" * 32,)}, "needs TLS mode 'required'"),
        ({"mode": "none", "ca_file": "/etc/ssl/ca.pem"}, "needs TLS mode 'required'"),
        ({"mode": "required", "ca_file": "/x.pem", "pins": ("ab" * 32,)}, "not both"),
    ],
)
def test_policies_that_mean_nothing_are_refused(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(TLSPolicyError, match=error):
        TLSPolicy(**kwargs)


async def test_unreadable_ca_file_is_a_tls_error_naming_it(make_test_mx: MakeMx) -> None:
    mx = make_test_mx(tls=True)
    policy = TLSPolicy("required", ca_file="/nonexistent/ca.pem")
    with pytest.raises(TLSError, match=re.escape("cannot load CA file '/nonexistent/ca.pem'")):
        await _client(mx, policy).open()
