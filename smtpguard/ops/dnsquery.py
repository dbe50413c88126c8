"""DNS for the operator tools: one resolver with short timeouts, answers sorted by outcome.

A check must tell "the record is not there" (NXDOMAIN or an empty answer: a
verdict about the domain) from "the lookup failed" (SERVFAIL, timeout, refused:
no verdict possible), so every query returns an :class:`Answer` whose
``outcome`` says which, instead of raising. Only a resolver that answers
nothing at all is an error of its own (:class:`ResolverError`, exit 2): then
no check means anything.

Answers are cached per process (name, type): SPF evaluation, the lookup count
and the MX check ask for the same names.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from smtpguard.config import parse_nameserver
from smtpguard.errors import UserError

Outcome = Literal["ok", "nxdomain", "nodata", "error"]

#: Longest TXT value kept (bytes after joining its strings); a hostile zone can
#: publish many kilobytes, and no SPF, DKIM or DMARC record needs more.
MAX_TXT = 8192


class ResolverError(UserError):
    """The configured resolver does not answer: checks would only report timeouts."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one query; ``rdatas`` are dnspython rdata objects when ``ok``."""

    name: str
    rdtype: str
    outcome: Outcome
    rdatas: tuple[Any, ...] = ()
    error: str = ""  # why, when outcome is "error"
    canonical: str = ""  # the name after following CNAMEs ("" when none)

    @property
    def void(self) -> bool:
        """NXDOMAIN or an empty answer: RFC 7208's "void lookup"."""
        return self.outcome in ("nxdomain", "nodata")

    def texts(self) -> list[str]:
        """TXT values, each record's strings joined (RFC 7208 section 3.3)."""
        out = []
        for r in self.rdatas:
            raw = b"".join(r.strings)[:MAX_TXT]
            out.append(raw.decode("utf-8", "replace"))
        return out

    def addresses(self) -> list[str]:
        return [r.address for r in self.rdatas if hasattr(r, "address")]

    def describe(self) -> str:
        """``"example.test TXT: timeout"`` for an error finding."""
        return f"{self.name} {self.rdtype}: {self.error or self.outcome}"


def _text(name: str | dns.name.Name) -> str:
    if isinstance(name, dns.name.Name):
        return name.to_text(omit_final_dot=True)
    return name.rstrip(".")


class Lookup:
    """A synchronous resolver with a cache; thread-safe (DNSBL zones are queried in parallel)."""

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 3.0) -> None:
        """``nameservers``: ``IP`` or ``IP:PORT`` (``[::1]:53`` for IPv6 with a port);
        empty means the system resolver (/etc/resolv.conf). ``timeout`` bounds one
        whole lookup, retries included."""
        resolver = _resolver(nameservers)
        self.described = ", ".join(nameservers or [str(ns) for ns in resolver.nameservers])
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)  # per try; then the next server or a retry
        resolver.use_edns(0, 0, 1232)  # RFC 6891; 1232 avoids IP fragmentation
        self.timeout = timeout
        self.resolver = resolver
        self.queries = 0
        self._cache: dict[tuple[str, str], Answer] = {}
        self._lock = threading.Lock()

    def probe(self) -> None:
        """Raise :class:`ResolverError` unless the resolver answers a query for the root.

        Any answer counts (even "no such record"); only silence, refusal or a
        network error means the resolver is unusable.
        """
        answer = self.query(".", "NS")
        if answer.outcome == "error":
            raise ResolverError(
                f"DNS resolver {self.described} did not answer ({answer.error});"
                " check --nameserver or delivery.nameservers"
            )

    def query(self, name: str | dns.name.Name, rdtype: str) -> Answer:
        key = (_text(name).lower() or ".", rdtype)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._query(key[0], rdtype)
        with self._lock:
            self._cache[key] = answer
        return answer

    def _query(self, name: str, rdtype: str) -> Answer:
        self.queries += 1
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as e:
            return Answer(name, rdtype, "error", error=f"invalid name: {e}")
        try:
            ans = self.resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, rdtype, "nxdomain")
        except dns.resolver.LifetimeTimeout:
            return Answer(name, rdtype, "error", error=f"timeout after {self.timeout:g}s")
        except dns.resolver.NoNameservers as e:
            return Answer(name, rdtype, "error", error=_no_nameservers(e))
        except dns.exception.DNSException as e:
            return Answer(name, rdtype, "error", error=str(e) or type(e).__name__)
        if ans.rrset is None:
            return Answer(name, rdtype, "nodata")
        canonical = _text(ans.canonical_name)
        return Answer(
            name,
            rdtype,
            "ok",
            tuple(ans.rrset),
            canonical="" if canonical.lower() == name.lower() else canonical,
        )

    def addresses(self, name: str, *, families: Sequence[str] = ("A", "AAAA")) -> Answer:
        """A and AAAA merged: ``ok`` if either has records, ``error`` if any failed
        and none has records, else ``nxdomain``/``nodata``."""
        answers = [self.query(name, t) for t in families]
        rdatas = tuple(r for a in answers for r in a.rdatas)
        canonical = next((a.canonical for a in answers if a.canonical), "")
        if rdatas:
            return Answer(name, "/".join(families), "ok", rdatas, canonical=canonical)
        failed = next((a for a in answers if a.outcome == "error"), None)
        if failed is not None:
            return Answer(name, "/".join(families), "error", error=failed.error)
        outcome: Outcome = "nxdomain" if answers[0].outcome == "nxdomain" else "nodata"
        return Answer(name, "/".join(families), outcome)


def _resolver(nameservers: Sequence[str]) -> dns.resolver.Resolver:
    """The given servers (``IP`` or ``IP:PORT``), else the system's (/etc/resolv.conf)."""
    if not nameservers:
        try:
            return dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise ResolverError(
                "no name server configured: /etc/resolv.conf has none;"
                " use --nameserver IP or delivery.nameservers"
            ) from None
    servers: list[str | dns.nameserver.Nameserver] = []
    for entry in nameservers:
        try:
            servers.append(dns.nameserver.Do53Nameserver(*parse_nameserver(entry)))
        except ValueError as e:
            raise UserError(f"name server: {e}") from None
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = servers
    return resolver


def _no_nameservers(e: dns.resolver.NoNameservers) -> str:
    """One line from dnspython's per-server error list (server, tcp, port, error,
    response): the rcode a server answered (``SERVFAIL``, ``REFUSED``) or the
    network error (``connection refused``)."""
    for entry in e.kwargs.get("errors") or []:
        err = entry[3] if len(entry) > 3 else None
        if isinstance(err, str):  # an unwanted rcode, as text
            return err
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, OSError):
            return err.strerror or str(err)
        if err is not None:
            return str(err) or type(err).__name__
    return "no server could answer"


def family_rdtype(ip: str) -> str:
    """``"A"`` for an IPv4 address, ``"AAAA"`` for IPv6."""
    return "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
