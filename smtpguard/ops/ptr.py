"""``doctor`` PTR check: forward-confirmed reverse DNS (FCrDNS) of the sending IP.

Receivers (Gmail's sender guidelines among them) reject or junk mail from an
IP without a PTR record, or whose PTR names a host that does not resolve back
to the IP: ``IP -> name -> same IP``.
"""

from __future__ import annotations

import ipaddress

import dns.reversename

from smtpguard.ops.dnsquery import Lookup, family_rdtype
from smtpguard.ops.findings import Finding, lookup_error

#: PTR names tried for forward confirmation (RFC 7208 section 4.6.4 uses 10 too).
MAX_PTR_NAMES = 10


def check_ptr(lookup: Lookup, ip: str) -> list[Finding]:
    reverse = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
    answer = lookup.query(reverse, "PTR")
    if answer.outcome == "error":
        return [lookup_error("ptr", answer, "ask the IP's provider to fix its reverse zone")]
    if answer.outcome != "ok":
        return [
            Finding(
                "ptr",
                "FAIL",
                f"{ip} has no PTR record",
                f"ask the provider of {ip} to set its PTR to your mail host's name",
                reverse,
            )
        ]
    names = [r.target.to_text(omit_final_dot=True) for r in answer.rdatas][:MAX_PTR_NAMES]
    rdtype = family_rdtype(ip)
    seen: list[str] = []
    for name in names:
        forward = lookup.query(name, rdtype)
        if forward.outcome == "error":
            return [lookup_error("ptr", forward)]
        addresses = forward.addresses()
        if _same_ip(ip, addresses):
            return [
                Finding("ptr", "PASS", f"{ip} -> {name} -> {ip} (forward-confirmed)", "", reverse)
            ]
        seen.append(f"{name} -> {', '.join(addresses[:4]) or 'no address'}")
    return [
        Finding(
            "ptr",
            "FAIL",
            f"PTR mismatch: {ip} -> {'; '.join(seen)}",
            f"make {names[0]} resolve to {ip}, or set the PTR to a name that does",
            reverse,
        )
    ]


def _same_ip(ip: str, addresses: list[str]) -> bool:
    want = ipaddress.ip_address(ip)
    return any(ipaddress.ip_address(a) == want for a in addresses)
