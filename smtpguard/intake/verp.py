"""Signed return paths: the envelope sender names the message and the recipient it was for.

With ``intake.bounce_domain`` set, mail to ``bob@example.org`` queued as message 4711
leaves with the envelope sender ``b+<token>@bounce.example.com`` (VERP, with the idea
of BATV, draft-levine-smtp-batv: the return path is signed). Whatever comes back to
that address - a DSN, an auto-reply, a forgery - can then be checked: a bounce counts
as evidence about bob only if it carries a token we signed, for bob, not yet expired.

Token: 20 bytes, base32 without padding, lower case (32 characters; the local part
``b+`` + token is 34 octets, well under RFC 5321's 64; local parts are compared
case-insensitively in practice, so decoding ignores case)::

    offset size
    0      1    version (high 3 bits, 1) and key id (low 5 bits)
    1      5    message id, big-endian (up to 2**40 - 1): the relay's queue id, or from
                2**39 up a message the milter signed (:mod:`smtpguard.store.sent`)
    6      2    last valid day, days since 1970-01-01 UTC
    8      4    recipient tag: HMAC-SHA256(key, "smtpguard-verp-rcpt" 0x00 recipient)[:4]
    12     8    MAC: HMAC-SHA256(key, "smtpguard-verp-mac" 0x00 bytes 0..11)[:8]

Why this is enough:

* **Forgery.** Without the key a valid token is a 64-bit guess: one accepted forgery
  per 2**63 tries on average, and every try is an SMTP transaction that the listener
  rate-limits. Truncating HMAC-SHA256 to 64 bits keeps its strength against forgery
  at 64 bits (NIST SP 800-107 r1 section 5.3.3 allows tags down to 32 bits where
  tries are limited); BATV itself uses 24 bits.
* **Re-pointing.** The recipient tag is covered by the MAC, and it is keyed, so a
  token received for one's own address cannot be turned into one for another
  recipient, and the token does not reveal the address to anyone who lacks the key.
  A bounce reporting another recipient than the tag names is ``other-recipient``.
* **Replay.** A copied token stays valid until its last day: it can only ever
  condemn the one recipient it names, whose mail server saw it anyway, and
  repeating a bounce only counts it again. After the expiry it is ``expired``.
* **Rotation.** The key id (5 bits, derived from the key itself) says which key
  signed; the previous key keeps verifying until ``previous_valid_until`` (then
  ``retired-key``). Two keys sharing an id (1 in 32) are both tried.

Every refusal has a precise reason (:data:`REASONS`) for the ``dsn-unverified``
record: ``no-token``, ``malformed``, ``unknown-key``, ``retired-key``,
``bad-signature``, ``expired``, ``other-recipient``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from smtpguard.address import normalize_address, normalize_domain
from smtpguard.errors import AddressError, ConfigError

if TYPE_CHECKING:
    from smtpguard.config import IntakeConfig

#: Local part prefix before the token.
PREFIX = "b+"
VERSION = 1
TOKEN_BYTES = 20
TOKEN_CHARS = 32
MAX_MESSAGE_ID = 2**40 - 1
_DAY = 86400
_RCPT_LABEL = b"smtpguard-verp-rcpt\x00"
_MAC_LABEL = b"smtpguard-verp-mac\x00"
_KEY_ID_LABEL = b"smtpguard-verp-key-id"
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")

#: Outcomes of :meth:`VerpCodec.check` (``verified`` or why not).
REASONS = (
    "verified",
    "no-token",
    "malformed",
    "unknown-key",
    "retired-key",
    "bad-signature",
    "expired",
    "other-recipient",
)


def key_id(key: bytes) -> int:
    """The 5-bit id a key signs with, derived from the key (nothing to configure)."""
    return hmac.digest(key, _KEY_ID_LABEL, "sha256")[0] & 0x1F


def _recipient_tag(key: bytes, recipient: str) -> bytes:
    return hmac.digest(key, _RCPT_LABEL + normalize_address(recipient).encode(), "sha256")[:4]


def _mac(key: bytes, header: bytes) -> bytes:
    return hmac.digest(key, _MAC_LABEL + header, "sha256")[:8]


@dataclass(frozen=True, slots=True)
class VerpToken:
    """A token whose signature verified: what it names, and the key that signed it."""

    message_id: int
    last_day: int  # days since 1970-01-01 UTC; valid through the end of that day
    key_id: int
    previous_key: bool  # signed with the key before the last rotation
    tag: bytes = field(repr=False)
    key: bytes = field(repr=False)

    @property
    def expires(self) -> float:
        """Epoch seconds when the token stops being valid."""
        return float((self.last_day + 1) * _DAY)

    def names(self, recipient: str) -> bool:
        """Was this token made for ``recipient`` (compared normalised)?"""
        try:
            tag = _recipient_tag(self.key, recipient)
        except AddressError:
            return False
        return hmac.compare_digest(tag, self.tag)


@dataclass(frozen=True, slots=True)
class VerpCheck:
    """The answer for one return path: ``reason`` is ``verified`` or why not."""

    reason: str
    token: VerpToken | None = None
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.reason == "verified"

    @property
    def message_id(self) -> int | None:
        return self.token.message_id if self.token is not None else None


class VerpCodec(Protocol):
    """Makes and checks signed return paths (the relay encodes, intake checks)."""

    @property
    def domain(self) -> str: ...

    def encode(self, message_id: int, recipient: str, *, now: float | None = None) -> str:
        """The return path for ``recipient`` of queued message ``message_id``."""
        ...

    def check(
        self, address: str, recipient: str | None = None, *, now: float | None = None
    ) -> VerpCheck:
        """Verify ``address``; with ``recipient``, also that the token names it."""
        ...


class SignedVerpCodec:
    """:class:`VerpCodec` with HMAC-SHA256 keys: the current one, maybe the previous one."""

    def __init__(
        self,
        domain: str,
        key: bytes,
        *,
        lifetime: float = 14 * _DAY,
        previous_key: bytes = b"",
        previous_valid_until: float | None = None,
    ) -> None:
        if not key:
            raise ValueError("a signing key is required")
        self._domain = normalize_domain(domain)
        self._key = key
        self._key_id = key_id(key)
        self._lifetime_days = max(1, math.ceil(lifetime / _DAY))
        self._previous = previous_key
        self._previous_id = key_id(previous_key) if previous_key else -1
        self._previous_until = previous_valid_until

    @classmethod
    def from_config(cls, cfg: IntakeConfig) -> SignedVerpCodec | None:
        """The codec the configuration describes, or None when no bounce domain is set."""
        from smtpguard.config import MIN_SECRET_BYTES, parse_iso_time
        from smtpguard.intake.keys import secret_setting

        if not cfg.bounce_domain:
            return None
        key = secret_setting(
            cfg.secret, cfg.secret_file, "intake.secret", min_bytes=MIN_SECRET_BYTES
        )
        previous = secret_setting(
            cfg.previous_secret,
            cfg.previous_secret_file,
            "intake.previous_secret",
            min_bytes=MIN_SECRET_BYTES,
        )
        if not key:
            raise ConfigError("intake.bounce_domain is set but no intake.secret_file is")
        until = parse_iso_time(cfg.previous_valid_until) if cfg.previous_valid_until else None
        return cls(
            cfg.bounce_domain,
            key,
            lifetime=cfg.token_lifetime,
            previous_key=previous,
            previous_valid_until=until,
        )

    @property
    def domain(self) -> str:
        return self._domain

    def token(self, message_id: int, recipient: str, *, now: float | None = None) -> str:
        """The 32-character token alone (see the module doc for its layout)."""
        if not 0 <= message_id <= MAX_MESSAGE_ID:
            raise ValueError(f"message id {message_id} does not fit a return path token")
        now = time.time() if now is None else now
        last_day = int(now // _DAY) + self._lifetime_days
        header = (
            bytes([VERSION << 5 | self._key_id])
            + message_id.to_bytes(5, "big")
            + last_day.to_bytes(2, "big")
            + _recipient_tag(self._key, recipient)
        )
        raw = header + _mac(self._key, header)
        return base64.b32encode(raw).decode("ascii").lower()

    def encode(self, message_id: int, recipient: str, *, now: float | None = None) -> str:
        return f"{PREFIX}{self.token(message_id, recipient, now=now)}@{self._domain}"

    def check(
        self, address: str, recipient: str | None = None, *, now: float | None = None
    ) -> VerpCheck:
        now = time.time() if now is None else now
        local, at, domain = address.strip().removeprefix("<").removesuffix(">").rpartition("@")
        try:
            ours = bool(at) and normalize_domain(domain) == self._domain
        except AddressError:
            ours = False
        if not ours or not local.lower().startswith(PREFIX):
            return VerpCheck("no-token", detail=f"not a return path at {self._domain}")
        text = local[len(PREFIX) :].lower()
        if len(text) != TOKEN_CHARS or not _BASE32.issuperset(text):
            return VerpCheck("malformed", detail=f"expected {TOKEN_CHARS} base32 characters")
        try:
            raw = base64.b32decode(text.upper())
        except (binascii.Error, ValueError):
            return VerpCheck("malformed", detail="not base32")
        header, mac = raw[:12], raw[12:]
        if header[0] >> 5 != VERSION:
            return VerpCheck("malformed", detail=f"unknown token version {header[0] >> 5}")
        kid = header[0] & 0x1F
        candidates = []
        if kid == self._key_id:
            candidates.append((self._key, False))
        if kid == self._previous_id:
            if self._previous_until is not None and now >= self._previous_until:
                if not candidates:
                    return VerpCheck("retired-key", detail=f"key {kid} retired")
            else:
                candidates.append((self._previous, True))
        if not candidates:
            return VerpCheck("unknown-key", detail=f"no key with id {kid}")
        signer = next((c for c in candidates if hmac.compare_digest(_mac(c[0], header), mac)), None)
        if signer is None:
            return VerpCheck("bad-signature", detail="signature does not match")
        key, previous = signer
        token = VerpToken(
            message_id=int.from_bytes(header[1:6], "big"),
            last_day=int.from_bytes(header[6:8], "big"),
            key_id=kid,
            previous_key=previous,
            tag=header[8:12],
            key=key,
        )
        if now >= token.expires:
            return VerpCheck("expired", token, detail=f"expired at day {token.last_day + 1}")
        if recipient is not None and not token.names(recipient):
            return VerpCheck("other-recipient", token, detail="made for another recipient")
        return VerpCheck("verified", token)
