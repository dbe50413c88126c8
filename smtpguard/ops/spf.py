"""SPF (RFC 7208): record parsing, macro expansion, ``check_host()``, and the lookup count.

Two questions, answered separately:

* :func:`tally` walks the whole record tree (``include:`` and ``redirect=``
  recursively) and counts the terms that cost a DNS query (``include``, ``a``,
  ``mx``, ``ptr``, ``exists``, ``redirect``): more than 10 makes receivers
  return permerror (section 4.6.4), however the evaluation for one IP goes.
  It also counts void lookups (NXDOMAIN or empty answers; more than 2 is
  permerror) and collects problems deeper in the tree.
* :class:`Evaluator` runs ``check_host(ip, domain, sender)`` exactly as a
  receiver does (section 4), limits included, for ``doctor --ip``.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

import dns.reversename

from smtpguard.ops.dnsquery import Answer, Lookup, family_rdtype
from smtpguard.ops.findings import Finding, lookup_error

Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

#: Section 4.6.4: DNS-querying terms per evaluation, and void lookups.
MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
#: Section 4.6.4: address records looked up per "mx" (more is permerror) or "ptr" (ignored).
MAX_ADDRESS_LOOKUPS = 10
#: The tally stops walking past this many lookups (a loop or a hostile tree).
MAX_TALLY = 50

QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
#: Terms that cost a DNS lookup (section 4.6.4).
DNS_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})

_MODIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_MACRO = re.compile(r"%(?:\{([A-Za-z])(\d*)([rR]?)([.\-+,/_=]*)\}|%|_|-)")
_CIDR = re.compile(r"^(.*?)(?:/(0|[1-9]\d?))?(?://(0|[1-9]\d{0,2}))?$", re.DOTALL)
_MACRO_LETTERS = set("slodiphvSLODIPHV")
_EXP_LETTERS = set("crtCRT")


class SpfSyntaxError(ValueError):
    """The record violates RFC 7208's grammar: receivers return permerror."""


class PermError(Exception):
    pass


class TempError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Term:
    """One mechanism (``-all``, ``include:x``, ``a/24``) or modifier (``redirect=x``)."""

    name: str  # lowercased mechanism or modifier name
    text: str  # as written
    qualifier: str = "+"
    value: str = ""  # domain-spec or network ("" = the current domain)
    cidr4: int | None = None
    cidr6: int | None = None
    modifier: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    mechanisms: tuple[Term, ...]
    redirect: Term | None = None
    exp: Term | None = None

    @property
    def all_term(self) -> Term | None:
        return next((t for t in self.mechanisms if t.name == "all"), None)

    def dns_terms(self) -> list[Term]:
        """Terms that cost a lookup, in evaluation order; redirect only if it can
        apply (section 6.1: ignored when the record has "all")."""
        terms = [t for t in self.mechanisms if t.name in DNS_TERMS]
        if self.redirect is not None and self.all_term is None:
            terms.append(self.redirect)
        return terms


def is_spf(text: str) -> bool:
    """Section 4.5: the record starts with "v=spf1" followed by a space or its end."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


# --------------------------------------------------------------------------- parsing


def parse(text: str) -> Record:
    """Parse a record (already known to start with ``v=spf1``); SpfSyntaxError on bad terms."""
    mechanisms: list[Term] = []
    modifiers: dict[str, Term] = {}
    for word in text.split(" ")[1:]:
        if not word:
            continue
        term = _term(word)
        if term.modifier:
            if term.name in ("redirect", "exp") and term.name in modifiers:
                raise SpfSyntaxError(f"{term.name}= given twice")
            modifiers[term.name] = term
        else:
            mechanisms.append(term)
    return Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def _term(word: str) -> Term:
    eq, colon, slash = word.find("="), word.find(":"), word.find("/")
    first_sep = min((i for i in (colon, slash) if i >= 0), default=len(word))
    if 0 < eq < first_sep:  # name=value: a modifier
        name, value = word[:eq], word[eq + 1 :]
        if not _MODIFIER_NAME.fullmatch(name):
            raise SpfSyntaxError(f"invalid modifier name in {word!r}")
        lname = name.lower()
        check_macro_string(value, exp=lname == "exp")
        if lname in ("redirect", "exp") and not value:
            raise SpfSyntaxError(f"{word!r} needs a domain")
        return Term(lname, word, value=value, modifier=True)
    qualifier = "+"
    body = word
    if body[:1] in QUALIFIERS:
        qualifier, body = body[0], body[1:]
    name = re.split(r"[:/]", body, maxsplit=1)[0].lower()
    rest = body[len(name) :]
    if name not in MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {word!r}")
    if name == "all":
        if rest:
            raise SpfSyntaxError(f"'all' takes no argument: {word!r}")
        return Term(name, word, qualifier)
    if name in ("ip4", "ip6"):
        return _ip_term(name, word, qualifier, rest)
    spec, cidr4, cidr6 = rest, None, None
    if name in ("a", "mx"):
        m = _CIDR.match(rest)
        assert m is not None  # the pattern matches any string
        spec = m.group(1)
        cidr4 = int(m.group(2)) if m.group(2) else None
        cidr6 = int(m.group(3)) if m.group(3) else None
        if (cidr4 is not None and cidr4 > 32) or (cidr6 is not None and cidr6 > 128):
            raise SpfSyntaxError(f"prefix length out of range in {word!r}")
    if spec:
        if not spec.startswith(":") or len(spec) == 1:
            raise SpfSyntaxError(f"malformed {name} mechanism {word!r}")
        spec = spec[1:]
        check_macro_string(spec)
    elif name in ("include", "exists"):
        raise SpfSyntaxError(f"{name} needs a domain: {word!r}")
    return Term(name, word, qualifier, spec, cidr4, cidr6)


def _ip_term(name: str, word: str, qualifier: str, rest: str) -> Term:
    if not rest.startswith(":"):
        raise SpfSyntaxError(f"{name} needs an address: {word!r}")
    network = rest[1:]
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise SpfSyntaxError(f"invalid network in {word!r}") from None
    if net.version != (4 if name == "ip4" else 6):
        raise SpfSyntaxError(f"{name} with an IPv{net.version} network: {word!r}")
    return Term(name, word, qualifier, str(net))


def check_macro_string(text: str, *, exp: bool = False) -> None:
    """Section 7.1 grammar: every "%" starts a valid macro; letters c, r, t only in exp=."""
    pos = 0
    while True:
        i = text.find("%", pos)
        if i < 0:
            break
        m = _MACRO.match(text, i)
        if not m:
            raise SpfSyntaxError(f"invalid macro in {text!r}")
        letter = m.group(1)
        if letter is not None:
            if letter not in _MACRO_LETTERS and not (exp and letter in _EXP_LETTERS):
                raise SpfSyntaxError(f"invalid macro letter %{{{letter}}} in {text!r}")
            if m.group(2) == "0" or (m.group(2) and int(m.group(2)) > 128):
                raise SpfSyntaxError(f"invalid macro transformer in {text!r}")
        pos = m.end()
    if any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise SpfSyntaxError(f"invalid character in {text!r}")


def has_macro(text: str) -> bool:
    return "%" in text


# --------------------------------------------------------------------------- macros


@dataclass(frozen=True, slots=True)
class MacroContext:
    ip: str
    sender: str  # the MAIL FROM address (postmaster@helo when empty)
    helo: str

    def value(self, letter: str, domain: str) -> str:
        local, _, sender_domain = self.sender.rpartition("@")
        addr = ipaddress.ip_address(self.ip)
        if letter == "i":
            if addr.version == 4:
                return str(addr)
            return ".".join(addr.exploded.replace(":", ""))
        return {
            "s": self.sender,
            "l": local or "postmaster",
            "o": sender_domain,
            "d": domain,
            "p": "unknown",  # section 7.3: "p" should not be used; we do not validate it
            "v": "in-addr" if addr.version == 4 else "ip6",
            "h": self.helo,
        }.get(letter, "")


def expand(text: str, ctx: MacroContext, domain: str) -> str:
    """Expand the macros of a domain-spec (section 7.3), then shorten to 253 octets."""

    def one(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "%%":
            return "%"
        if whole == "%_":
            return " "
        if whole == "%-":
            return "%20"
        letter, digits, reverse, delimiters = m.groups()
        parts = re.split(
            "[" + re.escape(delimiters or ".") + "]", ctx.value(letter.lower(), domain)
        )
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits) :]
        value = ".".join(parts)
        return urllib.parse.quote(value, safe="") if letter.isupper() else value

    out = _MACRO.sub(one, text)
    while len(out) > 253 and "." in out:  # section 7.3: drop labels from the left
        out = out.split(".", 1)[1]
    return out.rstrip(".")


def valid_domain(name: str) -> bool:
    """Section 4.3: a multi-label name with labels of 1-63 octets."""
    labels = name.rstrip(".").split(".")
    return len(labels) > 1 and all(0 < len(x) <= 63 for x in labels) and len(name) <= 253


# --------------------------------------------------------------------------- fetching


def fetch(lookup: Lookup, domain: str) -> tuple[Answer, list[str]]:
    """The TXT answer and the SPF records among its strings."""
    answer = lookup.query(domain, "TXT")
    return answer, [t for t in answer.texts() if is_spf(t)]


# --------------------------------------------------------------------------- check_host


class Evaluator:
    """``check_host()`` for one IP and sender, with the section 4.6.4 limits."""

    def __init__(self, lookup: Lookup, ip: str, sender: str, helo: str) -> None:
        addr = ipaddress.ip_address(ip)
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        self.lookup = lookup
        self.ip = addr
        self.ctx = MacroContext(str(addr), sender, helo)
        self.lookups = 0
        self.voids = 0
        self.matched = ""  # "ip4:192.0.2.0/24 in example.test" once a mechanism matches
        self.reason = ""  # why the result is permerror/temperror

    def evaluate(self, domain: str) -> Result:
        try:
            return self.check_host(domain)
        except PermError as e:
            self.reason = str(e)
            return "permerror"
        except TempError as e:
            self.reason = str(e)
            return "temperror"

    def check_host(self, domain: str) -> Result:
        if not valid_domain(domain):
            return "none"
        answer, records = fetch(self.lookup, domain)
        if answer.outcome == "error":
            raise TempError(answer.describe())
        if not records:
            return "none"
        if len(records) > 1:
            raise PermError(f"{domain} has {len(records)} SPF records")
        try:
            record = parse(records[0])
        except SpfSyntaxError as e:
            raise PermError(f"{domain}: {e}") from None
        for term in record.mechanisms:
            if self._matches(term, domain):
                here = f"{term.text} in {domain}"
                # An include matched because a term inside it did: name both.
                self.matched = f"{self.matched}, via {here}" if term.name == "include" else here
                return QUALIFIERS[term.qualifier]
            self.matched = ""  # an include that did not match leaves no match behind
        if record.redirect is not None and record.all_term is None:
            self._count()
            target = expand(record.redirect.value, self.ctx, domain)
            result = self.check_host(target)
            if result == "none":
                raise PermError(f"redirect={target}: no SPF record")
            return result
        return "neutral"

    def _count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise PermError(f"more than {MAX_LOOKUPS} DNS lookups")

    def _query(self, name: str, rdtype: str) -> Answer:
        answer = self.lookup.query(name, rdtype)
        if answer.outcome == "error":
            raise TempError(answer.describe())
        if answer.void:
            self._void(name)
        return answer

    def _void(self, name: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise PermError(f"more than {MAX_VOID_LOOKUPS} void lookups (last: {name})")

    def _in(self, addresses: list[str], term: Term) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for a in addresses:
            net = ipaddress.ip_network(
                f"{a}/{prefix if prefix is not None else self.ip.max_prefixlen}", strict=False
            )
            if self.ip in net:
                return True
        return False

    def _matches(self, term: Term, domain: str) -> bool:
        name = term.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            net = ipaddress.ip_network(term.value)
            return net.version == self.ip.version and self.ip in net
        self._count()
        target = expand(term.value, self.ctx, domain) if term.value else domain
        if name == "include":
            result = self.check_host(target)
            if result == "none":
                raise PermError(f"include:{target} has no SPF record")
            return result == "pass"
        if name == "a":
            return self._in(self._query(target, family_rdtype(str(self.ip))).addresses(), term)
        if name == "mx":
            return self._mx(target, term)
        if name == "exists":
            return self._query(target, "A").outcome == "ok"
        return self._ptr(target)

    def _mx(self, target: str, term: Term) -> bool:
        hosts = [
            r.exchange.to_text(omit_final_dot=True)
            for r in self._query(target, "MX").rdatas
            if r.exchange.to_text() != "."
        ]
        if len(hosts) > MAX_ADDRESS_LOOKUPS:
            raise PermError(f"mx:{target} has {len(hosts)} MX hosts (limit {MAX_ADDRESS_LOOKUPS})")
        rdtype = family_rdtype(str(self.ip))
        for host in hosts:
            answer = self.lookup.query(host, rdtype)
            if answer.outcome == "error":
                raise TempError(answer.describe())
            if self._in(answer.addresses(), term):
                return True
        return False

    def _ptr(self, target: str) -> bool:
        reverse = dns.reversename.from_address(str(self.ip)).to_text(omit_final_dot=True)
        answer = self.lookup.query(reverse, "PTR")  # section 5.5: a DNS error is no match
        if answer.void:
            self._void(reverse)
        rdtype = family_rdtype(str(self.ip))
        for r in answer.rdatas[:MAX_ADDRESS_LOOKUPS]:
            name = r.target.to_text(omit_final_dot=True).lower()
            if name == target.lower() or name.endswith("." + target.lower()):
                addresses = self.lookup.query(name, rdtype).addresses()
                if any(ipaddress.ip_address(a) == self.ip for a in addresses):
                    return True
        return False


# --------------------------------------------------------------------------- tally


@dataclass
class Tally:
    """The static picture of a domain's SPF record tree."""

    lookups: int = 0
    per_term: list[tuple[str, int]] = field(default_factory=list)  # top-level term, its cost
    voids: list[str] = field(default_factory=list)  # names that answered NXDOMAIN / nothing
    problems: list[str] = field(default_factory=list)  # each one makes receivers permerror
    temp_problems: list[str] = field(default_factory=list)  # lookups that failed
    uses_ptr: bool = False
    all_term: str = ""  # the top-level effective "all" ("-all"), via redirect; "" if none
    truncated: bool = False


def tally(lookup: Lookup, domain: str, record: Record) -> Tally:
    """Walk ``record`` (the domain's parsed SPF record) and everything it includes."""
    t = Tally()
    for term in record.dns_terms():
        before = t.lookups
        _walk_term(lookup, t, term, domain, [domain])
        t.per_term.append((term.text, t.lookups - before))
    t.all_term = _effective_all(lookup, record)
    return t


def _walk_term(lookup: Lookup, t: Tally, term: Term, domain: str, stack: list[str]) -> None:
    if t.lookups >= MAX_TALLY:
        t.truncated = True
        return
    t.lookups += 1
    if term.name == "ptr":
        t.uses_ptr = True
    if has_macro(term.value):
        return  # the target depends on the sender or IP: counted, not followed
    target = term.value or domain
    if term.name in ("include", "redirect"):
        _walk_record(lookup, t, target, [*stack, target], via=term.text)
    elif term.name == "a":
        _void_check(t, lookup.addresses(target), target)
    elif term.name == "mx":
        answer = lookup.query(target, "MX")
        _void_check(t, answer, target)
        if len(answer.rdatas) > MAX_ADDRESS_LOOKUPS:
            t.problems.append(
                f"{term.text}: {len(answer.rdatas)} MX hosts (limit {MAX_ADDRESS_LOOKUPS})"
            )
    elif term.name == "exists":
        _void_check(t, lookup.query(target, "A"), target)


def _void_check(t: Tally, answer: Answer, name: str) -> None:
    if answer.outcome == "error":
        t.temp_problems.append(answer.describe())
    elif answer.void:
        t.voids.append(name)


def _walk_record(lookup: Lookup, t: Tally, domain: str, stack: list[str], via: str) -> None:
    if domain in stack[:-1]:
        t.problems.append(f"loop: {' -> '.join(stack)}")
        return
    answer, records = fetch(lookup, domain)
    if answer.outcome == "error":
        t.temp_problems.append(answer.describe())
        return
    if not records:
        t.problems.append(f"{via}: {domain} has no SPF record")
        if answer.void:
            t.voids.append(domain)
        return
    if len(records) > 1:
        t.problems.append(f"{via}: {domain} has {len(records)} SPF records")
        return
    try:
        record = parse(records[0])
    except SpfSyntaxError as e:
        t.problems.append(f"{via}: {domain}: {e}")
        return
    for term in record.dns_terms():
        _walk_term(lookup, t, term, domain, stack)


def _effective_all(lookup: Lookup, record: Record, depth: int = 0) -> str:
    """The "all" that ends evaluation: the record's own, else its redirect target's."""
    term = record.all_term
    if term is not None:
        return term.qualifier + "all"
    if record.redirect is None or depth > 5 or has_macro(record.redirect.value):
        return ""
    _, records = fetch(lookup, record.redirect.value)
    if len(records) != 1:
        return ""
    try:
        return _effective_all(lookup, parse(records[0]), depth + 1)
    except SpfSyntaxError:
        return ""


# --------------------------------------------------------------------------- the check


def check_spf(lookup: Lookup, domain: str, ip: str | None) -> list[Finding]:
    answer, records = fetch(lookup, domain)
    if answer.outcome == "error":
        return [lookup_error("spf", answer)]
    if not records:
        return [
            Finding(
                "spf",
                "FAIL",
                f"no SPF record at {domain}",
                "publish one, e.g. 'v=spf1 mx -all' plus ip4:/include: for every sending host",
                domain,
            )
        ]
    if len(records) > 1:
        return [
            Finding(
                "spf",
                "FAIL",
                f"{len(records)} SPF records: receivers return permerror (RFC 7208 section 4.5)",
                "merge them into one TXT record",
                domain,
            )
        ]
    try:
        record = parse(records[0])
    except SpfSyntaxError as e:
        return [Finding("spf", "FAIL", f"syntax error: {e} (permerror)", "fix the record", domain)]
    t = tally(lookup, domain, record)
    findings = [Finding("spf", "PASS", records[0][:200], "", domain)]
    findings.append(_lookups_finding(t, domain))
    if len(t.voids) > MAX_VOID_LOOKUPS:
        findings.append(
            Finding(
                "spf.void",
                "FAIL",
                f"{len(t.voids)} void lookups (limit {MAX_VOID_LOOKUPS}): {', '.join(t.voids[:5])}",
                "remove terms naming domains that no longer exist",
                domain,
            )
        )
    findings += [
        Finding("spf", "FAIL", p + " (permerror)", "fix or remove that term", domain)
        for p in t.problems
    ]
    findings += [
        Finding("spf", "ERROR", f"lookup failed: {p}", "", domain) for p in t.temp_problems
    ]
    if t.uses_ptr:
        findings.append(
            Finding(
                "spf",
                "WARN",
                "uses 'ptr' (slow, unreliable; RFC 7208 section 5.5: do not use)",
                "replace ptr with ip4:/ip6: ranges or a:",
                domain,
            )
        )
    findings.append(_all_finding(t.all_term, domain))
    if ip is not None:
        findings.append(_ip_finding(lookup, domain, ip))
    return findings


def _lookups_finding(t: Tally, domain: str) -> Finding:
    parts = ", ".join(f"{text} {n}" for text, n in t.per_term)
    count = f"more than {MAX_TALLY}" if t.truncated else str(t.lookups)
    noun = "lookup" if count == "1" else "lookups"
    summary = f"{count} DNS {noun} (limit {MAX_LOOKUPS})" + (f": {parts}" if parts else "")
    if t.lookups > MAX_LOOKUPS:
        return Finding(
            "spf.lookups",
            "FAIL",
            summary + "; receivers return permerror",
            "flatten includes into ip4:/ip6: ranges and drop unused ones",
            domain,
        )
    return Finding("spf.lookups", "PASS", summary, "", domain)


def _all_finding(all_term: str, domain: str) -> Finding:
    if all_term == "+all":
        return Finding(
            "spf.all",
            "FAIL",
            "'+all': every host on the internet passes as this domain",
            "end the record with '-all' or '~all'",
            domain,
        )
    if all_term == "?all":
        return Finding(
            "spf.all",
            "WARN",
            "'?all': unlisted hosts get neutral, SPF protects nothing",
            "end the record with '~all' or '-all'",
            domain,
        )
    if not all_term:
        return Finding(
            "spf.all",
            "WARN",
            "no 'all' term: unlisted hosts get neutral",
            "end the record with '~all' or '-all'",
            domain,
        )
    return Finding("spf.all", "PASS", f"ends with '{all_term}'", "", domain)


def _ip_finding(lookup: Lookup, domain: str, ip: str) -> Finding:
    ev = Evaluator(lookup, ip, f"postmaster@{domain}", domain)
    result = ev.evaluate(domain)
    head = f"check_host({ip}, {domain}) = {result}"
    if result == "pass":
        return Finding("spf.ip", "PASS", f"{head} (matched {ev.matched})", "", domain)
    if result == "temperror":
        return Finding("spf.ip", "ERROR", f"{head}: {ev.reason}", "", domain)
    detail = f": {ev.reason}" if ev.reason else (f" (matched {ev.matched})" if ev.matched else "")
    net = "ip4" if ipaddress.ip_address(ip).version == 4 else "ip6"
    fix = f"add '{net}:{ip}' (or your provider's include:) before the all term"
    if result == "permerror":
        fix = "fix the record's errors: receivers treat permerror as a failure"
    return Finding(
        "spf.ip", "FAIL", f"{head}{detail}: mail from {ip} is not authorized", fix, domain
    )
