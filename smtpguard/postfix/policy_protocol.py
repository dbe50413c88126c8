"""Postfix's policy delegation protocol (SMTPD_POLICY_README), the wire format only.

A request is ``name=value`` lines, each ended by a newline, and an empty line::

    request=smtpd_access_policy
    protocol_state=RCPT
    sender=alice@example.org
    recipient=bob@example.com
    client_address=192.0.2.1
    ...
    <empty line>

and the reply is one ``action=...`` line and an empty line. Postfix reuses the
connection for many requests. Names are lower-case letters, digits and
underscores; values run to the end of the line and may hold anything else
(they come from the SMTP client, so they are hostile). Unknown attributes are
ignored, as the protocol asks.
"""

from __future__ import annotations

import re

#: The end of a request: the newline of its last line and the empty line.
END = b"\n\n"
_NAME = re.compile(r"[a-z0-9_]{1,64}\Z")
# A whole well-formed request in one pass (the common case costs one match).
_REQUEST = re.compile(r"(?:[a-z0-9_]{1,64}=[^\n]*\n)*[a-z0-9_]{1,64}=[^\n]*\Z")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class RequestError(ValueError):
    """A request that is not ``name=value`` lines (the text says which line and why)."""


def parse_request(block: bytes) -> dict[str, str]:
    """The attributes of one request; ``block`` is everything before the empty line.

    Raises :class:`RequestError` for a line without ``=``, a bad attribute name
    or a request that is not ``smtpd_access_policy``. Values are UTF-8 (Postfix
    passes SMTPUTF8 addresses as is); undecodable bytes become U+FFFD rather
    than an error, since only ``recipient`` matters and the policy then simply
    finds no such entry.
    """
    text = block.decode("utf-8", "replace")
    if not _REQUEST.match(text):
        _explain(text)
    attrs = dict(line.split("=", 1) for line in text.split("\n"))
    request = attrs.get("request")
    if request != "smtpd_access_policy":
        raise RequestError(f"request={_shown(request or '')}, expected smtpd_access_policy")
    return attrs


def _explain(text: str) -> None:
    """Raise the RequestError naming the first bad line of a request that did not match."""
    for number, line in enumerate(text.split("\n"), 1):
        name, eq, _ = line.partition("=")
        if not eq:
            raise RequestError(f"line {number}: not name=value")
        if not _NAME.match(name):
            raise RequestError(f"line {number}: bad attribute name {_shown(name)}")
    raise RequestError("not name=value lines")  # pragma: no cover - the regex and loop agree


def encode_reply(action: str) -> bytes:
    """``action=ACTION`` and the empty line; control characters in ``action`` become ``?``."""
    return f"action={_UNSAFE.sub('?', action)}\n\n".encode("utf-8", "replace")


def _shown(text: str) -> str:
    """A short, printable form of client input for an error message."""
    text = _UNSAFE.sub("?", text)
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
