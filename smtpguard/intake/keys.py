"""Secrets and public keys the configuration names, read once when a process starts.

A secret file is refused when everyone may read it (like ssh's private keys): the
return-path key lets whoever holds it forge bounces that suppress any address, and
a webhook password lets them post events. Problems are :class:`ConfigError` lines
naming the key and the file, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from typing import TYPE_CHECKING

from smtpguard.errors import ConfigError

if TYPE_CHECKING:  # cryptography loads only where a key is used
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

#: Bytes read from a secret file at most (a key is short; a huge file is a mistake).
MAX_SECRET_FILE = 4096


def read_secret_file(path: str, key: str) -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped) for setting ``key``."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    if mode & stat.S_IROTH:
        raise ConfigError(f"{key}: {path} is readable by everyone; chmod o-r {path}")
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{key}: {path} is longer than {MAX_SECRET_FILE} bytes")
    secret = data.strip()
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret


def secret_setting(inline: str, path: str, key: str, *, min_bytes: int = 1) -> bytes:
    """A secret given inline (``key``) or in a file (``key_file``); b"" when neither."""
    secret = read_secret_file(path, f"{key}_file") if path else inline.strip().encode()
    if secret and len(secret) < min_bytes:
        raise ConfigError(f"{key}: at least {min_bytes} bytes are needed, got {len(secret)}")
    return secret


def load_ec_public_key(text: str) -> EllipticCurvePublicKey:
    """An ECDSA P-256 public key from PEM or from bare base64 DER (SubjectPublicKeyInfo),
    the form SendGrid's settings page shows. Raises ValueError saying what is wrong."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_der_public_key,
        load_pem_public_key,
    )

    value = text.strip()
    try:
        if value.startswith("-----BEGIN"):
            key = load_pem_public_key(value.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(value.split()), validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("a base64 or PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("an ECDSA P-256 public key")
    return key
