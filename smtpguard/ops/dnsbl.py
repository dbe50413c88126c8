"""``doctor`` DNSBL check: is the sending IP listed on the configured block lists?

RFC 5782: query ``<reversed IP>.<zone>`` for A; an answer in 127.0.0.0/8 means
listed (127.0.0.2 and up; the TXT record at the same name says why), NXDOMAIN
means not listed. Some lists answer 127.255.255.x when they *refuse* the query
(Spamhaus: .252 typo in the zone, .254 query through a public resolver, .255
too many queries): that is no verdict, so it is an ERROR, never a listing.
An answer outside 127/8 usually comes from a resolver that rewrites NXDOMAIN
(ads, "search assist"): also an ERROR.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

from smtpguard.ops.dnsquery import Lookup
from smtpguard.ops.findings import Finding, lookup_error

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
#: Longest listing reason shown (the TXT record is the list operator's text).
MAX_REASON = 200

_REFUSALS = {
    "127.255.255.252": "typing error in the DNSBL zone name",
    "127.255.255.254": "query through a public or open resolver",
    "127.255.255.255": "excessive number of queries",
}


def reversed_ip(ip: str) -> str:
    """``192.0.2.1`` -> ``1.2.0.192``; IPv6 as reversed nibbles (RFC 5782 section 2.4)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ".".join(reversed(str(addr).split(".")))
    return ".".join(reversed(addr.exploded.replace(":", "")))


def check_dnsbl(lookup: Lookup, ip: str, zones: list[str]) -> list[Finding]:
    """One finding per listing or failed zone, plus one PASS naming the clean zones."""
    if not zones:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(zones))) as pool:
        results = list(pool.map(lambda z: _check_zone(lookup, ip, z), zones))
    clean = [zone for zone, finding in zip(zones, results, strict=True) if finding is None]
    findings = [f for f in results if f is not None]
    if clean:
        findings.insert(0, Finding("dnsbl", "PASS", f"{ip} not listed on {', '.join(clean)}"))
    return findings


def _check_zone(lookup: Lookup, ip: str, zone: str) -> Finding | None:
    check = f"dnsbl:{zone}"
    name = f"{reversed_ip(ip)}.{zone.strip('.')}"
    answer = lookup.query(name, "A")
    if answer.outcome == "error":
        return lookup_error(
            check, answer, f"check the zone name {zone}; some lists need registration"
        )
    if answer.void:
        return None
    codes = [a for a in answer.addresses() if ipaddress.ip_address(a) in _LOOPBACK]
    refused = [a for a in codes if ipaddress.ip_address(a) in _REFUSED]
    if refused:
        why = _REFUSALS.get(refused[0], "the list refused to answer")
        return Finding(
            check,
            "ERROR",
            f"{zone} refused the query ({refused[0]}: {why}); no verdict",
            "query through your own recursive resolver (not a public one),"
            " or use the list's registered data service",
            name,
        )
    if not codes:
        return Finding(
            check,
            "ERROR",
            f"{zone} answered {', '.join(answer.addresses())}, not a DNSBL code (127.x):"
            " the resolver may rewrite NXDOMAIN",
            "use a resolver that does not rewrite answers",
            name,
        )
    reason = _reason(lookup, name)
    return Finding(
        check,
        "FAIL",
        f"{ip} is listed on {zone} ({', '.join(codes)})" + (f": {reason}" if reason else ""),
        "fix the cause (compromised account, open relay, bad list),"
        f" then request removal from {zone}",
        name,
    )


def _reason(lookup: Lookup, name: str) -> str:
    txt = lookup.query(name, "TXT")
    if txt.outcome != "ok":
        return ""
    text = " ".join(txt.texts())
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:MAX_REASON]
