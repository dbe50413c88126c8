"""Amazon SNS HTTP(S) messages: parse, check the topic, verify the signature.

As AWS documents it ("Verifying the signatures of Amazon SNS messages",
https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html, and
the JSON formats of notifications and subscription confirmations,
https://docs.aws.amazon.com/sns/latest/dg/http-subscription-confirmation-json.html):

* the string to sign is ``Name\\nValue\\n`` for each signed field, in this order:
  ``Notification``: Message, MessageId, Subject (only if present), Timestamp,
  TopicArn, Type; ``SubscriptionConfirmation`` / ``UnsubscribeConfirmation``:
  Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type;
* ``SignatureVersion`` 1 is SHA1withRSA, 2 is SHA256withRSA (PKCS #1 v1.5), the
  ``Signature`` base64;
* the certificate comes from ``SigningCertURL``, which must be ``https`` on an SNS host
  (``sns.<region>.amazonaws.com``): fetched over verified TLS, or read from a directory
  the operator trusts, and cached;
* a message for a topic that is not ours is refused even when AWS signed it (any AWS
  account can make SNS sign messages).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from smtpguard.intake.webhooks.fetch import Fetch, FetchError, check_sns_url
from smtpguard.intake.webhooks.request import Refused, json_body

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

MESSAGE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_CONFIRMATION_FIELDS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)  # fmt: skip
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_REQUIRED = ("Type", "MessageId", "TopicArn", "Message", "Timestamp", "SignatureVersion",
             "Signature", "SigningCertURL")  # fmt: skip
#: Certificates kept after a fetch (SNS rotates them rarely; one per region in use).
CACHED_CERTIFICATES = 32


def parse_message(body: bytes) -> dict[str, str]:
    """The SNS JSON document; 400 unless it has every field SNS always sends, as text.

    Every refusal here and in :func:`verify` is a :class:`Refused`: 400 malformed, 403
    not authentic or not ours, 503 the certificate cannot be had now (SNS retries).
    """
    doc = json_body(body, dict, "an SNS message (a JSON object)")
    missing = [k for k in _REQUIRED if not isinstance(doc.get(k), str)]
    if missing:
        raise Refused(400, f"not an SNS message: no {', '.join(missing)}")
    if doc["Type"] not in MESSAGE_TYPES:
        raise Refused(400, f"unknown SNS message type {doc['Type']!r}")
    if doc["Type"] != "Notification" and not all(
        isinstance(doc.get(k), str) for k in ("SubscribeURL", "Token")
    ):
        raise Refused(400, f"{doc['Type']} without SubscribeURL and Token")
    return doc


def string_to_sign(doc: dict[str, Any]) -> bytes:
    """The bytes SNS signed for this message (see the module doc)."""
    out = []
    for name in SIGNED_FIELDS[doc["Type"]]:
        value = doc.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise Refused(400, f"{name}: expected text")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode("utf-8")


class CertificateSource(Protocol):
    """Where signing certificates come from (fetched, or an operator's directory)."""

    async def certificate(self, url: str) -> Certificate: ...


def _load(pem: bytes, url: str) -> Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Refused(403, f"{url}: not a PEM certificate") from None


class _Cache:
    def __init__(self) -> None:
        self._certs: OrderedDict[str, Certificate] = OrderedDict()

    def get(self, url: str) -> Certificate | None:
        return self._certs.get(url)

    def put(self, url: str, cert: Certificate) -> Certificate:
        self._certs[url] = cert
        while len(self._certs) > CACHED_CERTIFICATES:
            self._certs.popitem(last=False)
        return cert


class FetchedCertificates:
    """Certificates fetched once per URL over HTTPS (``fetch``), then cached."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._cache = _Cache()

    async def certificate(self, url: str) -> Certificate:
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        try:
            pem = await self._fetch(url)
        except FetchError as e:
            raise Refused(503, f"signing certificate unavailable: {e}") from None
        return self._cache.put(url, _load(pem, url))


class DirectoryCertificates:
    """Certificates an operator put in a directory, named as the last part of the URL
    (``SimpleNotificationService-<id>.pem``): for hosts that may not fetch from AWS."""

    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)
        self._cache = _Cache()

    async def certificate(self, url: str) -> Certificate:
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        name = PurePosixPath(urlsplit(url).path).name
        path = self._dir / name
        if not name.endswith(".pem") or not path.is_file():
            raise Refused(403, f"signing certificate {name!r} is not in {self._dir}")
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise Refused(503, f"{path}: cannot read: {e.strerror or e}") from None
        return self._cache.put(url, _load(pem, url))


async def verify(
    doc: dict[str, Any],
    certificates: CertificateSource,
    *,
    topics: frozenset[str] | set[str],
    now: float | None = None,
) -> None:
    """Raise :class:`Refused` unless ``doc`` is for one of ``topics`` and SNS signed it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if doc["TopicArn"] not in topics:
        raise Refused(403, f"topic {doc['TopicArn']!r} is not configured")
    hash_algorithm: hashes.HashAlgorithm
    if doc["SignatureVersion"] == "1":
        hash_algorithm = hashes.SHA1()
    elif doc["SignatureVersion"] == "2":
        hash_algorithm = hashes.SHA256()
    else:
        raise Refused(403, f"unknown SignatureVersion {doc['SignatureVersion']!r}")
    try:
        url = check_sns_url(doc["SigningCertURL"], what="SigningCertURL")
    except FetchError as e:
        raise Refused(403, str(e)) from None
    if not url.endswith(".pem"):
        raise Refused(403, "SigningCertURL: not a .pem certificate")
    try:
        signature = base64.b64decode(doc["Signature"], validate=True)
    except (binascii.Error, ValueError):
        raise Refused(403, "Signature: not base64") from None
    cert = await certificates.certificate(url)
    moment = time.time() if now is None else now
    if not (
        cert.not_valid_before_utc.timestamp() <= moment <= cert.not_valid_after_utc.timestamp()
    ):
        raise Refused(403, "signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused(403, "signing certificate has no RSA key")
    try:
        key.verify(signature, string_to_sign(doc), padding.PKCS1v15(), hash_algorithm)
    except InvalidSignature:
        raise Refused(403, "bad signature") from None
