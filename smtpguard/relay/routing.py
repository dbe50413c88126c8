"""Where mail for a domain goes: smarthost, per-domain route, or MX lookup.

One question, one answer: :meth:`Router.route` turns a recipient domain into
the ordered list of :class:`NextHop` addresses the delivery client tries in
turn, or raises :class:`RoutingError` saying whether the failure is permanent
(the domain can never receive mail) or temporary (DNS is unwell right now).

Order of precedence, highest first:

1. ``delivery.smarthost``: everything goes there (with its own AUTH and TLS).
2. ``delivery.routes``: a key ``"example.com"`` matches that domain only; a key
   ``".example.com"`` matches every subdomain of it (Postfix transport(5)
   convention). The exact key wins over a subdomain key; the longest wins among
   subdomain keys.
3. MX lookup (RFC 5321 section 5.1): MX records sorted by preference, equal
   preferences shuffled to spread load; each MX host resolved to its A then
   AAAA addresses. No MX at all: the domain's own A/AAAA is the implicit MX.
   A null MX (RFC 7505) or NXDOMAIN is permanent; SERVFAIL and timeouts are
   temporary.

Smarthost and route hosts are resolved to A/AAAA only, never MX (like
Postfix's ``[host]`` form): the operator named the machine. IP literals, with
or without brackets, are used as they are.

What DNS says is not trusted with where we connect: addresses that cannot be
a mail server (unspecified, multicast, broadcast) are always dropped from MX
and A/AAAA answers, and loopback, link-local, private (RFC 1918, shared
100.64/10, ULA ``fc00::/7``) and other non-public ranges are dropped unless
``delivery.allowed_destination_networks`` lists them; an IPv4-mapped IPv6
address counts as its IPv4 address. Otherwise anyone who can publish a DNS
record could make the relay connect to our own loopback services or a cloud
metadata address (169.254.169.254). Recipient address literals
(``user@[192.0.2.1]``) are refused unless ``delivery.allow_address_literals``,
and then filtered the same way. The smarthost and ``routes`` are the
operator's own words and are used as configured. A hop that is this relay's
own listener (``relay.listen``) is a configuration error, never a mail loop:
it is dropped with every less preferred MX (RFC 5321 section 5.1), and when
nothing is left the recipients are deferred with a text that says so.

DNS goes through dnspython's async resolver; ``delivery.nameservers`` pins the
servers (tests point it at a stub on loopback), otherwise the system's
resolv.conf is used. Answers are cached by dnspython's LRU cache for their TTL;
:meth:`Router.route_expiring` tells a caller how long the whole route holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import math
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from smtpguard.config import DeliveryConfig, parse_hostport, parse_nexthop
from smtpguard.errors import ConfigError

log = logging.getLogger("smtpguard.routing")

#: Bounds on how much one route() call may look up: RFC 5321 section 5.1 lets a
#: client stop after a reasonable number of MX hosts (Postfix stops at 5 addresses).
MAX_MX_HOSTS = 10
MAX_ADDRESSES = 20

#: How many distinct DNS answers stay cached.
CACHE_SIZE = 10_000
#: Longest a "this domain is dead" answer (NXDOMAIN, no records, null MX) is served
#: from the cache. Such an answer suppresses its domain only when seen again later
#: (``policy.dns_confirm_after``); with a long negative TTL, or a spoofed one, one
#: answer would otherwise be "seen" twice.
MAX_DEAD_ANSWER_CACHE = 60.0

_NO_ADDRESS = "no A or AAAA records"

#: The expiry times of the DNS answers one :meth:`Router.route_expiring` call used (a
#: list shared with the lookups it gathers: tasks copy the context, not the list).
_EXPIRIES: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "route_expiries", default=None
)


@dataclass(frozen=True)
class NextHop:
    """One address to try, with what the delivery client needs to talk to it."""

    host: str  # name for EHLO logs and the TLS SNI (the IP itself for a literal)
    address: str  # IP to connect to
    port: int
    preference: int
    source: str  # 'mx' | 'a' | 'smarthost' | 'route'
    tls: str  # 'none' | 'opportunistic' | 'required'
    username: str = ""
    password: str = ""


class RoutingError(Exception):
    """No next hop for a domain; carries what the classifier and the DSN need.

    ``reason`` is from the classifier's vocabulary: ``hostunknown`` (NXDOMAIN,
    no address at all, and null MX per RFC 7505: a domain that publishes
    "accepts no mail" is as dead a destination as one that does not exist; what
    either may do to the suppression list is the policy's decision),
    ``networkerror`` (DNS failed for now: SERVFAIL, timeout; or every address
    was one we do not connect to, or this relay itself), ``norelaying`` (an
    address literal while they are not allowed). ``dns`` is False for a
    decision of our own configuration: it is no evidence about the domain.
    """

    def __init__(
        self, text: str, *, reason: str, status: str, reply_code: str, permanent: bool,
        dns: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(text)
        self.text = text
        self.reason = reason
        self.status = status
        self.reply_code = reply_code
        self.permanent = permanent
        self.dns = dns

    @property
    def reply(self) -> str:
        """The failure as an SMTP reply line, the form the classifier reads."""
        return f"{self.reply_code} {self.status} {self.text}"

    def __repr__(self) -> str:
        return f"RoutingError({self.reply!r}, reason={self.reason!r})"


def _hostunknown(text: str) -> RoutingError:
    # RFC 3463 X.1.2: bad destination system address.
    return RoutingError(
        text, reason="hostunknown", status="5.1.2", reply_code="550", permanent=True
    )


def _nxdomain(name: str) -> RoutingError:
    return _hostunknown(f"Host or domain name not found: {name} does not exist (NXDOMAIN)")


def _no_address(name: str) -> RoutingError:
    return _hostunknown(f"Host or domain name not found: {name} has no MX, A or AAAA records")


def _bad_domain(domain: str, why: str) -> RoutingError:
    return _hostunknown(f"Bad destination domain {domain!r}: {why}")


def _null_mx(domain: str) -> RoutingError:
    # RFC 7505 section 4.2 / RFC 7504: 556 and 5.1.10 for a domain that accepts no mail.
    return RoutingError(
        f"Host or domain name not found: {domain} has no mail exchanger (RFC 7505 \"0 .\" MX)",
        reason="hostunknown", status="5.1.10", reply_code="556", permanent=True,
    )  # fmt: skip


def _dns_trouble(name: str, rdtype: str, why: str) -> RoutingError:
    # RFC 3463 X.4.3: directory server failure; always worth retrying.
    return RoutingError(
        f"DNS lookup failed for {name} {rdtype}, will retry: {why}",
        reason="networkerror", status="4.4.3", reply_code="451", permanent=False,
    )  # fmt: skip


def _no_usable_address(domain: str, dropped: list[str]) -> RoutingError:
    # RFC 3463 X.4.4: unable to route. Temporary: DNS or our configuration may change.
    shown = "; ".join(dropped[:3]) + (f"; {len(dropped) - 3} more" if len(dropped) > 3 else "")
    return RoutingError(
        f"No usable address for {domain}: {shown} (delivery.allowed_destination_networks"
        " lists networks that may be used)",
        reason="networkerror", status="4.4.4", reply_code="451", permanent=False, dns=False,
    )  # fmt: skip


def _loop(domain: str, hop: NextHop) -> RoutingError:
    # RFC 3463 X.4.6: routing loop detected; soft, because it is ours to fix.
    return RoutingError(
        f"Configuration error: mail for {domain} would loop back to this relay:"
        f" {hop.source} host {hop.host}[{hop.address}]:{hop.port} is relay.listen",
        reason="networkerror", status="4.4.6", reply_code="451", permanent=False, dns=False,
    )  # fmt: skip


def _literal_refused(domain: str) -> RoutingError:
    return RoutingError(
        f"Delivery to address literals like {domain} is not allowed"
        " (delivery.allow_address_literals)",
        reason="norelaying", status="5.7.1", reply_code="550", permanent=True, dns=False,
    )  # fmt: skip


#: IPv4 addresses that are never a mail server (RFC 919 limited broadcast).
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def not_public(ip: IPAddress) -> tuple[str, bool]:
    """Why ``ip`` is no public destination (``""`` if it is), and whether an
    allow-list may still admit it (loopback, link-local, private may be; unspecified,
    multicast and broadcast never)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified", False
    if ip.is_multicast:
        return "multicast", False
    if ip == _BROADCAST:
        return "broadcast", False
    if ip.is_loopback:
        return "loopback", True
    if ip.is_link_local:
        return "link-local", True
    if not ip.is_global:
        return "private" if ip.is_private else "not public", True
    return "", True


def _ip(text: str) -> str | None:
    """The IP in ``"192.0.2.1"``, ``"[192.0.2.1]"``, ``"[IPv6:2001:db8::1]"``; else None."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if inner[:5].lower() == "ipv6:":  # RFC 5321 section 4.1.3 address literal
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


class _Cache(dns.resolver.LRUCache):
    """dnspython's LRU cache; "dead domain" answers stay :data:`MAX_DEAD_ANSWER_CACHE` at most."""

    def put(self, key: dns.resolver.CacheKey, value: dns.resolver.Answer) -> None:
        rrset = value.rrset
        dead = rrset is None or (
            rrset.rdtype == dns.rdatatype.MX and all(r.exchange == dns.name.root for r in rrset)
        )
        if dead:
            value.expiration = min(value.expiration, time.time() + MAX_DEAD_ANSWER_CACHE)
        super().put(key, value)


class Router:
    """Resolves recipient domains to next hops; one per relay process (it holds the cache)."""

    def __init__(self, cfg: DeliveryConfig, *, timeout: float = 10.0, listen: str = "") -> None:
        """``timeout`` bounds one whole DNS lookup, retries included; ``listen`` is
        this relay's own ``relay.listen`` (HOST:PORT), never a next hop."""
        self.cfg = cfg
        self.timeout = timeout
        self._allowed = [ipaddress.ip_network(n, strict=False)
                         for n in cfg.allowed_destination_networks]  # fmt: skip
        self._listen: tuple[str, int] | None = None
        if listen:
            host, port = parse_hostport(listen)
            self._listen = (_ip(host) or ("127.0.0.1" if host == "localhost" else host), port)
        if cfg.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            servers: list[str | dns.nameserver.Nameserver] = []
            for entry in cfg.nameservers:
                host, port = parse_hostport(entry, 53)
                servers.append(dns.nameserver.Do53Nameserver(host, port))
            resolver.nameservers = servers
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise ConfigError(
                    "delivery.nameservers is empty and the system resolver configuration"
                    " (/etc/resolv.conf) has no name servers"
                ) from None
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 3.0)  # per server try, then retry within the lifetime
        resolver.use_edns(0, 0, 1232)  # RFC 6891; 1232 avoids IP fragmentation (DNS flag day 2020)
        resolver.cache = _Cache(CACHE_SIZE)
        self.resolver = resolver
        # Parsed once here, not per delivery; config.load has already validated
        # them, these errors are for a DeliveryConfig built in code.
        self._smarthost: tuple[str, int] | None = None
        if cfg.smarthost:
            try:
                self._smarthost = parse_nexthop(cfg.smarthost, 25)
            except ValueError as e:
                raise ConfigError(f"delivery.smarthost: {e}") from None
        self._routes: dict[str, tuple[str, int]] = {}
        for key, value in cfg.routes.items():
            try:
                self._routes[key.lower().rstrip(".")] = parse_nexthop(value, cfg.port)
            except ValueError as e:
                raise ConfigError(f"delivery.routes.{key}: {e}") from None

    async def route(self, domain: str) -> list[NextHop]:
        """Next hops for ``domain`` in the order to try them; raises :class:`RoutingError`."""
        domain = domain.strip().lower().rstrip(".")
        return self._not_ourselves(domain, await self._route(domain))

    async def route_expiring(self, domain: str) -> tuple[list[NextHop], float]:
        """:meth:`route`, and until when (unix time) the answer holds: the earliest
        expiry of the DNS answers it used (``inf`` when none was needed), so a caller
        may reuse it that long and no longer."""
        seen: list[float] = []
        token = _EXPIRIES.set(seen)
        try:
            hops = await self.route(domain)
        finally:
            _EXPIRIES.reset(token)
        return hops, min(seen, default=math.inf)

    async def _route(self, domain: str) -> list[NextHop]:
        cfg = self.cfg
        if self._smarthost is not None:
            host, port = self._smarthost
            return await self._fixed(
                host, port, "smarthost", cfg.smarthost_tls_mode,
                cfg.smarthost_user, cfg.smarthost_password,
            )  # fmt: skip
        route = self._match_route(domain)
        if route is not None:
            return await self._fixed(*route, "route", cfg.tls)
        if domain.startswith("["):  # user@[192.0.2.1]: RFC 5321 section 4.1.3, no DNS
            literal = _ip(domain)
            if literal is None:
                raise _bad_domain(domain, "not an IP address literal")
            if not cfg.allow_address_literals:
                raise _literal_refused(domain)
            return self._public(domain, [NextHop(literal, literal, cfg.port, 0, "a", cfg.tls)])
        return await self._mx(domain)

    # ------------------------------------------------------------------ where we never go

    def _not_ourselves(self, domain: str, hops: list[NextHop]) -> list[NextHop]:
        """Without this relay's own listener and, as RFC 5321 section 5.1 has an MX
        host that finds itself do, every hop of the same or a lower preference."""
        if self._listen is None:
            return hops
        for hop in hops:
            if self._is_own_listener(hop):
                kept = [h for h in hops if h.preference < hop.preference]
                if not kept:
                    raise _loop(domain, hop)
                return kept
        return hops

    def _is_own_listener(self, hop: NextHop) -> bool:
        assert self._listen is not None
        host, port = self._listen
        if hop.port != port:
            return False
        if hop.address == host:
            return True
        try:
            ip, own = ipaddress.ip_address(hop.address), ipaddress.ip_address(host)
        except ValueError:
            return False
        # A listener on every address (0.0.0.0, ::) is reached through loopback too.
        return ip == own or (own.is_unspecified and ip.is_loopback)

    def _public(self, domain: str, hops: list[NextHop]) -> list[NextHop]:
        """The hops whose address may be connected to (module doc); RoutingError if none."""
        kept: list[NextHop] = []
        dropped: list[str] = []
        for hop in hops:
            ip = ipaddress.ip_address(hop.address)
            why, allowable = not_public(ip)
            if why and not (allowable and any(ip in net for net in self._allowed)):
                dropped.append(f"{hop.host}[{hop.address}] is {why}")
            else:
                kept.append(hop)
        if dropped:
            log.warning("routing %s: dropped %s", domain, "; ".join(dropped))
        if not kept and dropped:
            raise _no_usable_address(domain, dropped)
        return kept

    # ------------------------------------------------------------------ configured hosts

    def _match_route(self, domain: str) -> tuple[str, int] | None:
        if domain in self._routes:
            return self._routes[domain]
        labels = domain.split(".")
        for i in range(1, len(labels)):  # longest parent first
            key = "." + ".".join(labels[i:])
            if key in self._routes:
                return self._routes[key]
        return None

    async def _fixed(
        self, host: str, port: int, source: str, tls: str, user: str = "", password: str = ""
    ) -> list[NextHop]:
        literal = _ip(host)
        if literal is not None:
            return [NextHop(literal, literal, port, 0, source, tls, user, password)]
        name = host.strip("[]")
        # A name the operator configured that does not resolve is the operator's to fix:
        # defer (as Postfix does for its relayhost), never bounce or suppress recipients.
        try:
            addresses = await self._addresses(name)
        except RoutingError as e:
            raise _dns_trouble(name, "A/AAAA", f"{source} host: {e.text}") from None
        if not addresses:
            raise _dns_trouble(name, "A/AAAA", f"{source} host has {_NO_ADDRESS}")
        return [NextHop(name, a, port, 0, source, tls, user, password) for a in addresses]

    # ------------------------------------------------------------------ MX

    async def _mx(self, domain: str) -> list[NextHop]:
        try:
            qname = dns.name.from_text(domain)
        except (dns.exception.DNSException, UnicodeError) as e:
            raise _bad_domain(domain, str(e)) from None
        if len(qname.labels) < 2:
            raise _bad_domain(domain, "empty")
        answer = await self._query(qname, "MX")
        if answer is None:  # no MX: implicit MX, RFC 5321 section 5.1
            addresses = await self._addresses(domain)
            if not addresses:
                raise _no_address(domain)
            hops = [NextHop(domain, a, self.cfg.port, 0, "a", self.cfg.tls) for a in addresses]
            return self._public(domain, hops)[:MAX_ADDRESSES]
        records = sorted(answer, key=lambda r: r.preference)
        targets = [r for r in records if r.exchange != dns.name.root]
        if not targets:  # RFC 7505 section 3: "0 ." alone means no mail, ever
            raise _null_mx(domain)
        # RFC 5321 section 5.1: equal preferences in random order.
        groups: dict[int, list[str]] = {}
        for r in targets:
            name = r.exchange.to_text(omit_final_dot=True).lower()
            group = groups.setdefault(r.preference, [])
            if name not in group:
                group.append(name)
        ordered: list[tuple[int, str]] = []
        for pref in sorted(groups):
            names = groups[pref]
            random.shuffle(names)
            ordered += [(pref, n) for n in names]
        ordered = ordered[:MAX_MX_HOSTS]
        results = await asyncio.gather(
            *(self._addresses(name) for _, name in ordered), return_exceptions=True
        )
        hops: list[NextHop] = []
        trouble: RoutingError | None = None
        for (pref, name), result in zip(ordered, results, strict=True):
            if isinstance(result, RoutingError):
                if not result.permanent:
                    trouble = result
                continue
            if isinstance(result, BaseException):
                raise result
            hops += [NextHop(name, a, self.cfg.port, pref, "mx", self.cfg.tls) for a in result]
        if hops:
            return self._public(domain, _dedupe(hops))[:MAX_ADDRESSES]
        if trouble is not None:
            raise trouble
        raise RoutingError(
            f"Host or domain name not found: no MX host of {domain} has an address",
            reason="hostunknown", status="5.1.2", reply_code="550", permanent=True,
        )  # fmt: skip

    async def _addresses(self, name: str) -> list[str]:
        """A then AAAA addresses of ``name`` (IPv4 first: the more often working path).

        [] when the name exists without addresses; RoutingError for NXDOMAIN or DNS
        trouble (temporary only if neither family gave an answer).
        """
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as e:
            raise _bad_domain(name, str(e)) from None
        v4, v6 = await asyncio.gather(
            self._query(qname, "A"), self._query(qname, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        errors: list[RoutingError] = []
        for result in (v4, v6):
            if isinstance(result, RoutingError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                addresses += [r.address for r in result]
        if addresses:
            return addresses
        if errors:
            raise next((e for e in errors if not e.permanent), errors[0])
        return []

    async def _query(self, qname: dns.name.Name, rdtype: str) -> dns.resolver.Answer | None:
        """One lookup; None for "no records of this type", RoutingError otherwise."""
        name = qname.to_text(omit_final_dot=True)
        try:
            answer = await self.resolver.resolve(qname, rdtype, search=False)
            expiries = _EXPIRIES.get()
            if expiries is not None:
                expiries.append(answer.expiration)
            return answer
        except dns.resolver.NXDOMAIN:
            raise _nxdomain(name) from None
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NoNameservers:
            raise _dns_trouble(name, rdtype, "no server answered (SERVFAIL)") from None
        except dns.exception.Timeout:
            raise _dns_trouble(name, rdtype, f"DNS timeout after {self.timeout:g}s") from None
        except dns.exception.DNSException as e:
            raise _dns_trouble(name, rdtype, str(e) or type(e).__name__) from None


def _dedupe(hops: list[NextHop]) -> list[NextHop]:
    """Keep the first (best preference) hop for each address and port."""
    seen: set[tuple[str, int]] = set()
    out: list[NextHop] = []
    for hop in hops:
        if (hop.address, hop.port) not in seen:
            seen.add((hop.address, hop.port))
            out.append(hop)
    return out
