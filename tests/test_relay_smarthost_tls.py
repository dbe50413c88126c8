"""Smarthost AUTH through a real relay: the password goes only over TLS that verified the server.

The smarthost is a test MX on loopback, named ``smarthost.test`` in the stub DNS
(so the certificate's name is checked against a name, as in production). What
the server received is checked on the wire (``TestMx.client_bytes``, decrypted
after STARTTLS): "the password was never sent" is an observation, not a promise.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.certs import CertAuthority, openssl_fingerprint, self_signed
from tests.fixtures.mx import TestMx
from tests.test_relay_delivery import BODY, tried, wait_states

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

USER = "relayuser"
PASSWORD = "s3cret-Pa55"


def password_on_the_wire(mx: TestMx) -> bool:
    """The password in any form AUTH PLAIN or LOGIN would carry it, or any AUTH at all."""
    sent = mx.client_bytes()
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    login = base64.b64encode(PASSWORD.encode())
    return any(s in sent for s in (PASSWORD.encode(), plain, login, b"AUTH"))


@pytest.fixture
def smarthost_relay(start_relay: Callable[..., Any], dns_server: Any) -> Callable[..., Any]:
    """``smarthost_relay(mx, **delivery)``: a relay sending everything to ``mx`` with AUTH."""

    def start(mx: TestMx, **delivery: Any) -> Any:
        dns_server.add("smarthost.test", "A", "127.0.0.1")
        settings = {
            "smarthost": f"smarthost.test:{mx.port}",
            "smarthost_user": USER,
            "smarthost_password": PASSWORD,
            "retry_initial": 30.0,
            **delivery,
        }
        return start_relay(delivery=settings)

    return start


def test_auth_offered_without_starttls_gets_no_password_and_defers(
    make_test_mx: Callable[..., TestMx], smarthost_relay: Callable[..., Any]
) -> None:
    mx = make_test_mx(auth={USER: PASSWORD})  # AUTH PLAIN LOGIN, no STARTTLS
    relay = smarthost_relay(mx)  # smarthost_tls not set: credentials make it "required"
    relay.send("s@example.org", ["r@example.com"], BODY)
    state, _, reason, diag = tried(relay.data_dir)
    assert (state, reason) == ("queued", "failedstarttls")
    assert "does not offer STARTTLS and TLS is required" in diag
    assert not password_on_the_wire(mx) and mx.auth_attempts == [] and mx.messages == []


def test_self_signed_certificate_for_another_name_is_refused_and_gets_no_password(
    make_test_mx: Callable[..., TestMx], smarthost_relay: Callable[..., Any]
) -> None:
    mx = make_test_mx(tls=True, hostname="unrelated.example", auth={USER: PASSWORD})
    relay = smarthost_relay(mx, smarthost_tls="required")
    relay.send("s@example.org", ["r@example.com"], BODY)
    state, _, reason, diag = tried(relay.data_dir)
    assert (state, reason) == ("queued", "failedstarttls")
    assert "certificate not trusted for 'smarthost.test'" in diag
    assert not password_on_the_wire(mx) and mx.auth_attempts == [] and mx.messages == []


def test_certificate_from_the_configured_ca_file_is_trusted(
    make_test_mx: Callable[..., TestMx], smarthost_relay: Callable[..., Any], tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path / "ca")
    mx = make_test_mx(tls=True, tls_files=ca.issue("smarthost.test"), auth={USER: PASSWORD})
    relay = smarthost_relay(mx, smarthost_tls_ca_file=str(ca.cert))
    relay.send("s@example.org", ["r@example.com"], BODY)
    (got,) = mx.wait_for(1, timeout=15)
    assert got.tls and mx.auth_attempts == [("PLAIN", USER, True)]
    wait_states(relay.data_dir, {"r@example.com": "delivered"})


def test_pinned_self_signed_certificate_is_trusted(
    make_test_mx: Callable[..., TestMx], smarthost_relay: Callable[..., Any], tmp_path: Path
) -> None:
    files = self_signed(tmp_path / "pin", "unrelated.example")
    mx = make_test_mx(tls=True, tls_files=files, auth={USER: PASSWORD})
    relay = smarthost_relay(mx, smarthost_tls_fingerprints=[openssl_fingerprint(files.cert)])
    relay.send("s@example.org", ["r@example.com"], BODY)
    (got,) = mx.wait_for(1, timeout=15)
    assert got.tls and mx.auth_attempts == [("PLAIN", USER, True)]


def test_a_pin_that_does_not_match_is_refused_and_gets_no_password(
    make_test_mx: Callable[..., TestMx], smarthost_relay: Callable[..., Any]
) -> None:
    mx = make_test_mx(tls=True, hostname="smarthost.test", auth={USER: PASSWORD})
    relay = smarthost_relay(mx, smarthost_tls_fingerprints=["ab" * 32])
    relay.send("s@example.org", ["r@example.com"], BODY)
    state, _, reason, diag = tried(relay.data_dir)
    assert (state, reason) == ("queued", "failedstarttls")
    assert "matches no configured pin" in diag
    assert not password_on_the_wire(mx)


def test_mx_delivery_stays_opportunistic_with_an_unverifiable_certificate(
    make_test_mx: Callable[..., TestMx], start_relay: Callable[..., Any], dns_server: Any
) -> None:
    from tests.fixtures.relay import route_to_mx

    route_to_mx(dns_server, "example.com")
    mx = make_test_mx(tls=True, hostname="unrelated.example")
    relay = start_relay(delivery={"port": mx.port})
    relay.send("s@example.org", ["r@example.com"], BODY)
    (got,) = mx.wait_for(1, timeout=15)
    assert got.tls  # RFC 7435: encrypted, not authenticated, better than plaintext


def test_refused_credentials_defer_instead_of_bouncing(
    make_test_mx: Callable[..., TestMx], smarthost_relay: Callable[..., Any], tmp_path: Path
) -> None:
    files = self_signed(tmp_path / "pin", "smarthost.test")
    mx = make_test_mx(tls=True, tls_files=files, auth={USER: "another password"})
    relay = smarthost_relay(mx, smarthost_tls_fingerprints=[openssl_fingerprint(files.cert)])
    relay.send("s@example.org", ["r@example.com"], BODY)
    state, _, reason, diag = tried(relay.data_dir)
    assert (state, reason) == ("queued", "authfailure")
    assert diag.startswith("AUTH refused: 535")
