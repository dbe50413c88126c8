"""``doctor`` DKIM check: the public key at ``<selector>._domainkey.<domain>``.

RFC 6376 section 3.6.1 key records: ``v=DKIM1`` (optional, first), ``k=``
key type (rsa by default, ed25519 per RFC 8463), ``p=`` the key in base64
(empty means revoked), ``t=y`` testing, ``h=`` hash algorithms. RFC 8301:
verifiers ignore RSA keys under 1024 bits, and signers should use 2048.
For RSA, ``p=`` is a DER SubjectPublicKeyInfo (some tools publish a bare
PKCS#1 RSAPublicKey, which verifiers accept too); for ed25519 it is the raw
32-byte key.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from smtpguard.ops.dnsquery import Lookup
from smtpguard.ops.findings import Finding, lookup_error
from smtpguard.ops.tagvalue import parse_tags

#: RFC 8301 section 3.2: keys under 1024 bits must not be used, 2048 is the target.
RSA_MIN_BITS = 1024
RSA_GOOD_BITS = 2048


def check_dkim(lookup: Lookup, domain: str, selector: str) -> list[Finding]:
    check = f"dkim:{selector}"
    name = f"{selector}._domainkey.{domain}"
    answer = lookup.query(name, "TXT")
    if answer.outcome == "error":
        return [lookup_error(check, answer)]
    if answer.outcome != "ok":
        return [
            Finding(
                check,
                "FAIL",
                f"no DKIM key at {name}",
                f"publish the public key of selector {selector!r}, or check the selector's name",
                name,
            )
        ]
    records = answer.texts()
    if len(records) > 1:
        return [
            Finding(
                check,
                "FAIL",
                f"{len(records)} TXT records at {name}: verifiers may pick any",
                "publish exactly one key record per selector",
                name,
            )
        ]
    return [_judge(check, name, records[0])]


def _judge(check: str, name: str, record: str) -> Finding:
    def fail(summary: str, fix: str) -> Finding:
        return Finding(check, "FAIL", summary, fix, name)

    try:
        tags = parse_tags(record)
    except ValueError as e:
        return fail(f"syntax error: {e}", "republish the key record as the signer printed it")
    values = dict(tags)
    if "v" in values and (tags[0][0] != "v" or values["v"] != "DKIM1"):
        return fail("v= must be the first tag and say DKIM1", "start the record with v=DKIM1;")
    if "p" not in values:
        return fail("no p= tag (the public key)", "republish the key record with its p= tag")
    key_b64 = "".join(values["p"].split())
    if not key_b64:
        return fail(
            "key revoked (empty p=): signatures with this selector fail",
            "stop signing with this selector, or publish its key",
        )
    hashes = [h.strip() for h in values.get("h", "sha256").split(":")]
    if "sha256" not in hashes:
        return fail("h= excludes sha256 (RFC 8301: sha1 is not secure)", "remove h= or add sha256")
    try:
        der = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        return fail("p= is not valid base64", "republish the key exactly as generated")
    key_type = values.get("k", "rsa").lower()
    if key_type == "rsa":
        finding = _rsa(check, name, der, key_b64)
    elif key_type == "ed25519":
        finding = _ed25519(check, name, der)
    else:
        return fail(f"unknown key type k={key_type}", "use k=rsa or k=ed25519")
    if finding.status == "PASS" and "y" in values.get("t", "").split(":"):
        return Finding(
            check,
            "WARN",
            finding.summary + "; testing mode (t=y): receivers may ignore failures",
            "remove t=y once signing works",
            name,
        )
    return finding


def _rsa(check: str, name: str, der: bytes, key_b64: str) -> Finding:
    try:
        key = load_der_public_key(der)
    except ValueError:
        # A bare PKCS#1 RSAPublicKey, as some key generators publish it.
        try:
            pem = f"-----BEGIN RSA PUBLIC KEY-----\n{key_b64}\n-----END RSA PUBLIC KEY-----\n"
            key = load_pem_public_key(pem.encode())
        except ValueError:
            return Finding(
                check, "FAIL", "p= is not an RSA public key", "republish the key as generated", name
            )
    if not isinstance(key, rsa.RSAPublicKey):
        return Finding(
            check, "FAIL", f"k=rsa but the key is {type(key).__name__}", "fix k= or p=", name
        )
    bits = key.key_size
    if bits < RSA_MIN_BITS:
        return Finding(
            check,
            "FAIL",
            f"RSA {bits}-bit key: verifiers ignore keys under {RSA_MIN_BITS} bits",
            f"generate a {RSA_GOOD_BITS}-bit key under a new selector and switch to it",
            name,
        )
    if bits < RSA_GOOD_BITS:
        return Finding(
            check,
            "WARN",
            f"RSA {bits}-bit key: weaker than the recommended {RSA_GOOD_BITS}",
            f"generate a {RSA_GOOD_BITS}-bit key under a new selector and switch to it",
            name,
        )
    return Finding(check, "PASS", f"RSA {bits}-bit key", "", name)


def _ed25519(check: str, name: str, raw: bytes) -> Finding:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return Finding(
            check,
            "FAIL",
            f"k=ed25519 but p= is {len(raw)} bytes, not a 32-byte key",
            "publish the raw 32-byte key in base64 (RFC 8463 section 4.2)",
            name,
        )
    return Finding(
        check,
        "PASS",
        "ed25519 key (also sign with RSA: not every verifier supports ed25519)",
        "",
        name,
    )
