"""TLS policy for the outbound SMTP client: when to STARTTLS and what to trust.

Three modes, as in Postfix's ``smtp_tls_security_level``:

``none``
    Never STARTTLS.
``opportunistic`` (Postfix ``may``; RFC 7435)
    STARTTLS whenever the server offers it; the certificate is not checked
    (an unverified encrypted session beats a plaintext one, and MX hosts have
    no name we could check without DNSSEC). A failed handshake makes the client
    go on in plaintext over a *new* connection (see
    :mod:`smtpguard.relay.smtpclient`). Never good enough for credentials.
``required`` (Postfix ``verify``/``fingerprint``)
    STARTTLS must be offered and must succeed, and the server must prove who
    it is, by one of:

    * **chain and host name** (the default): the certificate chains to the
      system CA store, or to the CA file when ``ca_file`` is set (then *only*
      to that file), and names the host we were told to connect to (its DNS
      or IP subjectAltName), TLS 1.2 or later;
    * **pin**: the SHA-256 fingerprint of the server's leaf certificate (the
      DER bytes, what ``openssl x509 -noout -fingerprint -sha256`` prints and
      what Postfix's ``smtp_tls_fingerprint_cert_match`` compares) is one of
      ``pins``. A pin *replaces* chain and name checks: it names the exact
      certificate, which no CA can do, and it is how self-signed smarthosts
      are trusted. Several pins may be listed for a certificate rollover.
      Whole-certificate pins (not SPKI) because the stdlib gives the DER
      certificate and hashing it needs no ASN.1 parser; the price is a new
      pin at every renewal, even with the same key.

    ``ca_file`` and ``pins`` are exclusive (choose one way of trusting), and
    both only mean something with ``required``.

MX delivery uses ``opportunistic`` (RFC 7435): without DNSSEC an MX host name
proves nothing. DANE (RFC 7672) and MTA-STS (RFC 8461) would be further modes
here, taking the names or keys to check from DNS or the policy file.

SSL contexts are built once per distinct policy (loading the system store
costs milliseconds) and reused by every connection; a changed CA file is read
again after a restart.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass

__all__ = ["MODES", "TLSInfo", "TLSPolicy", "TLSPolicyError", "fingerprint", "parse_pin"]

MODES = ("none", "opportunistic", "required")

_HEX64 = re.compile(r"[0-9a-f]{64}")


class TLSPolicyError(ValueError):
    """A policy that cannot be used as written (bad mode, pin, unreadable CA file)."""


def parse_pin(text: str) -> str:
    """A SHA-256 pin as 64 lowercase hex digits.

    Accepts what operators paste: ``AB:CD:...`` (openssl's output, with or
    without a ``sha256 Fingerprint=`` / ``sha256:`` prefix), any case.
    """
    value = text.strip()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
            break
    value = value.replace(":", "").lower()
    if not _HEX64.fullmatch(value):
        raise TLSPolicyError(
            f"not a SHA-256 certificate fingerprint: {text!r} (64 hex digits, colons allowed)"
        )
    return value


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as lowercase hex: the form pins are compared in."""
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class TLSInfo:
    """What a STARTTLS handshake gave us, for logs and for the AUTH decision."""

    version: str
    cipher: str
    verified: bool  # chain + host name, or pin: the server proved who it is
    method: str  # "chain", "pin" or "none" (opportunistic: encrypted, not authenticated)
    peer_sha256: str  # the leaf certificate's fingerprint ('' if the server sent none)


@dataclass(frozen=True)
class TLSPolicy:
    """How one next hop is secured; see the module docstring for the semantics."""

    mode: str = "opportunistic"
    ca_file: str = ""
    pins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TLSPolicyError(f"TLS mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        pins = tuple(parse_pin(p) for p in self.pins)
        object.__setattr__(self, "pins", pins)
        if (pins or self.ca_file) and self.mode != "required":
            raise TLSPolicyError(
                f"a CA file or certificate pin needs TLS mode 'required', not {self.mode!r}"
            )
        if pins and self.ca_file:
            raise TLSPolicyError(
                "choose a CA file or certificate pins, not both (a pin replaces chain checks)"
            )

    @property
    def verifies(self) -> bool:
        """True when a session under this policy has an authenticated server (AUTH may go)."""
        return self.mode == "required"

    def context(self) -> ssl.SSLContext | None:
        """The client SSL context (shared, built once); None for mode ``none``.

        Raises :class:`TLSPolicyError` naming the CA file when it cannot be loaded.
        """
        if self.mode == "none":
            return None
        return _context(self.mode == "required" and not self.pins, self.ca_file)

    def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """After the handshake: the pin check (chain checks already ran in OpenSSL).

        Raises :class:`ssl.SSLCertVerificationError` when pins are set and none matches.
        """
        der = ssl_object.getpeercert(binary_form=True) or b""
        peer = fingerprint(der) if der else ""
        cipher = ssl_object.cipher()
        info = TLSInfo(
            version=ssl_object.version() or "",
            cipher=cipher[0] if cipher else "",
            verified=self.mode == "required",
            method="none",
            peer_sha256=peer,
        )
        if self.mode != "required":
            return info
        if not self.pins:
            return _replace_method(info, "chain")
        if peer and any(hmac.compare_digest(peer, pin) for pin in self.pins):
            return _replace_method(info, "pin")
        raise ssl.SSLCertVerificationError(
            f"certificate fingerprint sha256:{peer or '(none sent)'} matches no configured pin"
        )


def _replace_method(info: TLSInfo, method: str) -> TLSInfo:
    return TLSInfo(info.version, info.cipher, info.verified, method, info.peer_sha256)


@functools.lru_cache(maxsize=32)
def _context(verify_chain: bool, ca_file: str) -> ssl.SSLContext:
    if verify_chain:
        try:
            # Only the CA file when one is given, the system store otherwise.
            ctx = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as e:
            raise TLSPolicyError(f"cannot load CA file {ca_file!r}: {e}") from None
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        # Opportunistic, or pinned (the pin check runs after the handshake).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
