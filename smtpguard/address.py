"""Mail addresses and domains: strict parsing and one canonical form.

Every part of smtpguard that compares addresses (the relay's RCPT check, the
suppression list, the classifier's recipients, the CLI) goes through
:func:`normalize_address`, so "the same address" means the same thing everywhere.

The syntax is RFC 5321's ``Mailbox`` (section 4.1.2), extended by RFC 6531
(SMTPUTF8) to allow UTF-8 in local parts and domains. Header syntax (RFC 5322:
comments, display names, obsolete forms) is *not* accepted: what arrives here
comes from an SMTP envelope, a bounce's recipient field or an operator's
command line. That is why this module does not hand addresses to
``email.headerregistry``: its parser is deliberately lenient (it records
defects and carries on), and accepting garbage here would put garbage on the
suppression list. ``email.utils`` is not needed either: there is no display
name to strip, only optional angle brackets.

The canonical form:

* **Domain**: lowercased; internationalised labels IDNA-encoded to their ASCII
  ``xn--`` form with the stdlib ``idna`` codec (IDNA 2003 / nameprep, so
  ``Bücher.de`` becomes ``xn--bcher-kva.de``); address literals keep the
  bracket form with a normalised IP (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``).
* **Local part**: Unicode NFC (RFC 6532 section 3.1 recommends it), an
  unnecessary quoted form unquoted (``"foo"`` is ``foo``, RFC 5321 section
  4.1.2 says both denote the same mailbox), then **lowercased**.

Lowercasing the local part is a deliberate departure from RFC 5321 section 2.4,
which lets the receiving host treat ``Foo`` and ``foo`` as different mailboxes.
In practice virtually no mailbox provider does, and the costs are lopsided: if
the suppression list compared local parts case-sensitively, a bounce for
``John@example.com`` would not stop a later send to ``john@example.com``, and
every such miss is a hard bounce that costs sender reputation. Treating them as
one can at worst suppress a case-twin mailbox that almost certainly does not
exist. Dots and ``+tags`` are *not* folded: providers differ there (Gmail
ignores dots, most others do not), so we keep them as given.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata

from smtpguard.errors import AddressError

__all__ = [
    "normalize_address",
    "normalize_domain",
    "normalize_target",
    "split_address",
]

#: RFC 5321 section 4.5.3.1.1 / 4.5.3.1.2: octet limits.
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63

# RFC 5321 section 4.1.2 ``atext`` (RFC 5322 section 3.2.3), plus any non-ASCII
# character for RFC 6531 ``UTF8-non-ascii``. Control characters are never atext.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
# RFC 5321 ``sub-domain = Let-dig [Ldh-str]`` for an ASCII label.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fail(addr: str, problem: str) -> AddressError:
    return AddressError(f"invalid address {addr!r}: {problem}")


def _strip_brackets(addr: str) -> str:
    """``<a@b>`` -> ``a@b``; a source route ``<@r1,@r2:a@b>`` is dropped.

    RFC 5321 section 4.1.2 / C: servers MUST accept the obsolete source route
    syntax and SHOULD ignore the route.
    """
    text = addr.strip()
    if text[:1] == "<" or text[-1:] == ">":
        if not (text.startswith("<") and text.endswith(">")):
            raise _fail(addr, "unbalanced angle brackets")
        text = text[1:-1]
        if text.startswith("@"):
            route, sep, rest = text.partition(":")
            if not sep or not all(hop.startswith("@") and len(hop) > 1 for hop in route.split(",")):
                raise _fail(addr, "malformed source route")
            text = rest
    return text


def _split(addr: str, text: str) -> tuple[str, str]:
    """Split at the ``@`` that separates local part and domain.

    A quoted local part may itself contain ``@``, so the split is at the last
    ``@``; a domain never contains one.
    """
    if not text:
        raise _fail(addr, "empty address")
    local, sep, domain = text.rpartition("@")
    if not sep:
        raise _fail(addr, "no '@' (expected local-part@domain)")
    if not local:
        raise _fail(addr, "empty local part")
    if not domain:
        raise _fail(addr, "empty domain")
    return local, domain


def _unquote(addr: str, local: str) -> str:
    """The content of an RFC 5321 ``Quoted-string``, quoted pairs resolved."""
    body = local[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            # quoted-pairSMTP = %d92 %d32-126
            if i + 1 >= len(body) or not 32 <= ord(body[i + 1]) <= 126:
                raise _fail(addr, "bad backslash escape in quoted local part")
            out.append(body[i + 1])
            i += 2
            continue
        if ch == '"':
            raise _fail(addr, "unescaped '\"' inside quoted local part")
        if ord(ch) < 32 or ord(ch) == 127:
            raise _fail(addr, "control character in local part")
        out.append(ch)
        i += 1
    return "".join(out)


def _normalize_local(addr: str, local: str) -> str:
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise _fail(addr, "unbalanced quotes in local part")
        content = unicodedata.normalize("NFC", _unquote(addr, local)).lower()
        if not content:
            raise _fail(addr, "empty quoted local part")
        if _DOT_STRING.fullmatch(content):
            result = content  # the quotes were unnecessary: same mailbox
        else:
            result = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        result = (local if local.isascii() else unicodedata.normalize("NFC", local)).lower()
        if not _DOT_STRING.fullmatch(result):
            if ".." in result:
                raise _fail(addr, "consecutive dots in local part")
            if result.startswith(".") or result.endswith("."):
                raise _fail(addr, "local part starts or ends with a dot")
            bad = next(c for c in result if not _DOT_STRING.fullmatch(c) and c != ".")
            raise _fail(addr, f"character {bad!r} not allowed in an unquoted local part")
    size = len(result) if result.isascii() else len(result.encode("utf-8"))
    if size > MAX_LOCAL_OCTETS:
        raise _fail(addr, f"local part is {size} octets (RFC 5321 limit {MAX_LOCAL_OCTETS})")
    return result


def _address_literal(domain: str) -> str:
    """RFC 5321 section 4.1.3 address literals, with the IP in canonical form."""
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError(f"invalid domain {domain!r}: not a valid IP address literal") from None


@functools.lru_cache(maxsize=8192)
def normalize_domain(domain: str) -> str:
    """A domain in canonical form: lowercased, IDNA-encoded (``xn--``), validated.

    Raises :class:`~smtpguard.errors.AddressError` naming the problem. Cached:
    real mail streams repeat a few thousand domains endlessly.
    """
    if not isinstance(domain, str):
        raise AddressError(f"invalid domain {domain!r}: not a string")
    if domain.startswith("[") and domain.endswith("]"):
        return _address_literal(domain)
    if not domain:
        raise AddressError("invalid domain '': empty")
    if _CONTROL.search(domain) or " " in domain:
        raise AddressError(f"invalid domain {domain!r}: contains whitespace or control characters")
    if domain.isascii():
        ascii_domain = domain.lower()
    else:
        try:
            ascii_domain = domain.encode("idna").decode("ascii").lower()
        except UnicodeError as e:
            raise AddressError(f"invalid domain {domain!r}: not IDNA-encodable ({e})") from None
    if len(ascii_domain) > MAX_DOMAIN_OCTETS:
        raise AddressError(
            f"invalid domain {domain!r}: {len(ascii_domain)} octets "
            f"(RFC 5321 limit {MAX_DOMAIN_OCTETS})"
        )
    for label in ascii_domain.split("."):
        if not label:
            raise AddressError(f"invalid domain {domain!r}: empty label (stray dot)")
        if len(label) > MAX_LABEL_OCTETS:
            raise AddressError(
                f"invalid domain {domain!r}: label {label[:20]!r}... longer than "
                f"{MAX_LABEL_OCTETS} octets"
            )
        if not _LDH_LABEL.fullmatch(label):
            raise AddressError(
                f"invalid domain {domain!r}: label {label!r} is not letters, digits and "
                "inner hyphens"
            )
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise AddressError(
                    f"invalid domain {domain!r}: {label!r} is not valid punycode"
                ) from None
    return ascii_domain


def normalize_address(addr: str) -> str:
    """``"<Foo@EXAMPLE.com>"`` -> ``"foo@example.com"``; ``"Foo@Bücher.de"`` ->
    ``"foo@xn--bcher-kva.de"``.

    Accepts an RFC 5321 Mailbox, optionally in angle brackets (a source route
    is dropped). The null reverse-path ``<>`` is not an address and is refused
    like any other empty input; callers handling MAIL FROM check for it first.
    Raises :class:`~smtpguard.errors.AddressError` naming the problem.
    """
    if not isinstance(addr, str):
        raise AddressError(f"invalid address {addr!r}: not a string")
    if _CONTROL.search(addr):
        raise _fail(addr, "contains control characters (CR, LF, NUL...)")
    local, domain = _split(addr, _strip_brackets(addr))
    try:
        domain = normalize_domain(domain)
    except AddressError as e:
        raise _fail(addr, str(e).removeprefix("invalid ")) from None
    return f"{_normalize_local(addr, local)}@{domain}"


def split_address(addr: str) -> tuple[str, str]:
    """``(local, domain)`` of the normalised address."""
    local, _, domain = normalize_address(addr).rpartition("@")
    return local, domain


def normalize_target(text: str) -> tuple[str, str]:
    """``("address", "a@b.example")`` or ``("domain", "b.example")``.

    The suppression list holds both kinds; an operator names a whole domain as
    ``example.com`` or ``@example.com``, an address as ``user@example.com``.
    """
    if not isinstance(text, str):
        raise AddressError(f"invalid address {text!r}: not a string")
    stripped = text.strip()
    if stripped.startswith("@") and "@" not in stripped[1:]:
        return "domain", normalize_domain(stripped[1:])
    if "@" not in stripped and not stripped.startswith("<"):
        if not stripped:
            raise AddressError("invalid address '': empty")
        return "domain", normalize_domain(stripped)
    return "address", normalize_address(text)
