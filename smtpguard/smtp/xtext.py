"""RFC 3461 section 4 xtext and RFC 6533 section 3 utf-8-addr-xtext.

ENVID and ORCPT values travel as xtext: printable ASCII except ``+`` and ``=``,
everything else as ``+HH``. The ``utf-8`` address type of ORCPT (RFC 6533)
writes non-ASCII characters as ``\\x{HEX}`` instead.
"""

from __future__ import annotations

import re

# xtext = *( xchar / hexchar ); hexchar = "+" 2(%x30-39 / %x41-46).
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# EmbeddedUnicodeChar in utf-8-addr-xtext.
_EMBEDDED_UNICODE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


class XtextError(ValueError):
    """Not well-formed xtext (or utf-8-addr-xtext)."""


#: A value that is its own xtext (printable ASCII without "+", "=" and space).
_PLAIN = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]*\Z")


def encode(value: str) -> str:
    """xtext for ``value``: '+', '=', controls, space and non-ASCII (as UTF-8) become +HH."""
    if _PLAIN.match(value):
        return value  # the usual ORCPT address: one regex, not a step per character
    out = []
    for byte in value.encode("utf-8"):
        if byte in (0x2B, 0x3D) or not 33 <= byte <= 126:
            out.append(f"+{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def decode(value: str) -> str:
    """``"a+2Bb"`` -> ``"a+b"``; :class:`XtextError` when ``value`` is not xtext."""
    if not _XTEXT.match(value):
        raise XtextError("malformed xtext")
    if "+" not in value:
        return value
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)


def decode_utf8_addr(value: str) -> str:
    """RFC 6533 utf-8-addr-xtext (``\\x{E9}`` escapes, or raw UTF-8 under SMTPUTF8)."""
    if "+" in value or "=" in value:
        raise XtextError("malformed utf-8-addr-xtext")
    try:
        return _EMBEDDED_UNICODE.sub(lambda m: chr(int(m.group(1), 16)), value)
    except (ValueError, OverflowError):
        raise XtextError("malformed utf-8-addr-xtext") from None
