"""MAIL FROM / RCPT TO arguments: the path and the ESMTP parameters.

RFC 5321 section 4.1.2 (path syntax) and RFC 1869 section 6 (``keyword=value``
parameters), with the parameters a relay in front of Postfix passes on: SIZE
(RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET / ENVID / NOTIFY / ORCPT
(RFC 3461) and AUTH (RFC 4954, accepted and ignored). Errors carry the whole
SMTP reply (:class:`ParamError`), so the server only has to send it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpguard.smtp import xtext
from smtpguard.smtp.text import printable

#: RFC 3461 section 4.4 / 4.2: longest ENVID and ORCPT values (encoded form).
MAX_ENVID = 100
MAX_ORCPT = 500
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})

# esmtp-keyword, and esmtp-value = 1*(%d33-60 / %d62-126) extended by RFC 6531 to UTF-8.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
#: What a decoded ORCPT must not hold: controls, DEL, lone surrogates.
_ORCPT_UNSAFE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class ParamError(ValueError):
    """A malformed ESMTP parameter; ``reply`` is the full SMTP reply."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class MailParams:
    """What the MAIL FROM parameters asked for."""

    smtputf8: bool = False
    body: str = "7BIT"  # "7BIT" or "8BITMIME"
    ret: str = ""  # "FULL", "HDRS" or ""
    envid: str = ""  # xtext-decoded
    size: int = 0  # RFC 1870 SIZE= (the client's estimate); 0 when not given


@dataclass(frozen=True, slots=True)
class RcptParams:
    """What the RCPT TO parameters asked for."""

    notify: tuple[str, ...] = ()
    orcpt: str = ""  # "rfc822;user@example.com", decoded


def split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` into the path's inside and the parameter text.

    ``Path = "<" [ A-d-l ":" ] Mailbox ">"``; the angle brackets are required
    (strict: Postfix always sends them). A quoted local part may contain ``>``,
    so quotes and backslash pairs are honoured. Raises ValueError when there is
    no well-formed ``<...>``.
    """
    text = arg.lstrip(" ")
    if not text.startswith("<"):
        raise ValueError("path must be in angle brackets")
    quoted = escaped = False
    for i in range(1, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise ValueError("garbage after path")
            return text[1:i], rest.strip(" ")
    raise ValueError("unterminated path")


def parse_params(text: str) -> dict[str, str | None]:
    """``SIZE=10 BODY=8BITMIME SMTPUTF8`` -> ``{"SIZE": "10", ..., "SMTPUTF8": None}``.

    Keywords are case-insensitive (upper-cased here); values keep their case
    (ENVID and ORCPT are case-sensitive). Duplicates and malformed pairs are
    501 5.5.4 (RFC 3463: invalid command arguments).
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise ParamError(f"501 5.5.4 Malformed parameter {printable(item[:40])}")
        key = key.upper()
        if key in params:
            raise ParamError(f"501 5.5.4 Duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def xtext_decode(value: str) -> str:
    """Decode xtext (``+2B`` is ``+``); ParamError if malformed."""
    try:
        return xtext.decode(value)
    except xtext.XtextError:
        raise ParamError("501 5.5.4 Malformed xtext in parameter value") from None


def parse_notify(value: str | None) -> tuple[str, ...]:
    """RFC 3461 section 4.1: ``NEVER`` alone, or a list of SUCCESS/FAILURE/DELAY."""
    if not value:
        raise ParamError("501 5.5.4 NOTIFY requires a value")
    items = value.upper().split(",")
    if items == ["NEVER"]:
        return ("NEVER",)
    if "NEVER" in items or not set(items) <= NOTIFY_VALUES:
        raise ParamError("501 5.5.4 NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY")
    return tuple(dict.fromkeys(items))


def parse_orcpt(value: str | None) -> str:
    """RFC 3461 section 4.2 ``ORCPT=addr-type;xtext`` -> ``"rfc822;user@example.com"``.

    The ``utf-8`` address type (RFC 6533 section 3) carries ``\\x{HEX}``
    escapes or, under SMTPUTF8, raw UTF-8; both are decoded. The result never
    holds a control character (it ends up in a DSN header).
    """
    if not value or len(value) > MAX_ORCPT:
        raise ParamError("501 5.5.4 ORCPT requires addr-type;address (at most 500 octets)")
    addr_type, sep, encoded = value.partition(";")
    if not sep or not encoded or not _ADDR_TYPE.match(addr_type):
        raise ParamError("501 5.5.4 ORCPT requires addr-type;address")
    if addr_type.lower() == "utf-8":
        try:
            decoded = xtext.decode_utf8_addr(encoded)
        except xtext.XtextError:
            raise ParamError("501 5.5.4 Malformed utf-8-addr-xtext in ORCPT") from None
    else:
        decoded = xtext_decode(encoded)
    if _ORCPT_UNSAFE.search(decoded):
        raise ParamError("501 5.5.4 ORCPT contains control characters")
    return f"{addr_type};{decoded}"


def orcpt_param(orcpt: str) -> str:
    """The ``ORCPT=type;xtext`` parameter a client sends for a decoded ORCPT value."""
    kind, sep, addr = orcpt.partition(";")
    if not sep:
        kind, addr = "rfc822", orcpt
    return f"ORCPT={kind.strip()};{xtext.encode(addr.strip())}"


def parse_mail_params(text: str, *, extended: bool, size_limit: int) -> MailParams:
    """The parameters of ``MAIL FROM:<...> text``; ParamError with the reply to send.

    ``extended``: the client said EHLO (parameters need it). ``size_limit``: 0
    for none; a larger SIZE is ``552 5.3.4`` at once (RFC 1870 section 6.1).
    """
    params = parse_params(text)
    if params and not extended:
        raise ParamError("501 5.5.4 Parameters need EHLO")
    smtputf8 = "SMTPUTF8" in params
    if smtputf8 and params.pop("SMTPUTF8") is not None:
        raise ParamError("501 5.5.4 SMTPUTF8 takes no value")
    body = (params.pop("BODY", None) or "7BIT").upper()
    if body not in ("7BIT", "8BITMIME"):
        raise ParamError("501 5.5.4 BODY must be 7BIT or 8BITMIME")
    size = 0
    if "SIZE" in params:
        text = params.pop("SIZE")
        if not text or not text.isdigit() or len(text) > 20:
            raise ParamError("501 5.5.4 SIZE requires a number")
        size = int(text)
        if size_limit and size > size_limit:
            raise ParamError("552 5.3.4 Message size exceeds fixed maximum message size")
    ret = ""
    if "RET" in params:
        ret = (params.pop("RET") or "").upper()
        if ret not in ("FULL", "HDRS"):
            raise ParamError("501 5.5.4 RET must be FULL or HDRS")
    envid = ""
    if "ENVID" in params:
        raw = params.pop("ENVID") or ""
        if not raw or len(raw) > MAX_ENVID:
            raise ParamError("501 5.5.4 ENVID requires 1-100 octets of xtext")
        envid = xtext_decode(raw)
        # RFC 3461 section 4.4: printable US-ASCII only (it goes into a DSN).
        if not all(" " <= c <= "~" for c in envid):
            raise ParamError("501 5.5.4 ENVID must be printable ASCII")
    params.pop("AUTH", None)  # RFC 4954 section 5: accepted, not trusted
    if params:
        raise ParamError(f"555 5.5.4 Unsupported MAIL parameter {printable(next(iter(params)))}")
    return MailParams(smtputf8=smtputf8, body=body, ret=ret, envid=envid, size=size)


def parse_rcpt_params(text: str, *, extended: bool) -> RcptParams:
    """The parameters of ``RCPT TO:<...> text``; ParamError with the reply to send."""
    params = parse_params(text)
    if params and not extended:
        raise ParamError("501 5.5.4 Parameters need EHLO")
    notify = parse_notify(params.pop("NOTIFY")) if "NOTIFY" in params else ()
    orcpt = parse_orcpt(params.pop("ORCPT")) if "ORCPT" in params else ""
    if params:
        raise ParamError(f"555 5.5.4 Unsupported RCPT parameter {printable(next(iter(params)))}")
    return RcptParams(notify=notify, orcpt=orcpt)
