"""``doctor`` MX check: can the domain receive mail (its bounces and replies)?

A sending domain needs working MX hosts: remote servers send DSNs to the
envelope sender's domain, and many verify that the sender's domain accepts
mail at all. RFC 5321 section 5.1 falls back to the address record when there
is no MX ("implicit MX"); RFC 7505's null MX (``0 .``) says the domain
accepts no mail, and receivers may refuse mail from such senders (section 4.2).
"""

from __future__ import annotations

import ipaddress

from smtpguard.ops.dnsquery import Answer, Lookup
from smtpguard.ops.findings import Finding, lookup_error

#: MX hosts checked for addresses; more is a misconfiguration in itself.
MAX_MX_HOSTS = 20


def is_null_mx(answer: Answer) -> bool:
    return any(r.preference == 0 and r.exchange.to_text() == "." for r in answer.rdatas)


def check_mx(lookup: Lookup, domain: str) -> list[Finding]:
    answer = lookup.query(domain, "MX")
    if answer.outcome == "error":
        return [lookup_error("mx", answer)]
    if answer.outcome == "nxdomain":
        return [
            Finding(
                "mx",
                "FAIL",
                f"{domain} does not exist (NXDOMAIN)",
                "register the domain or fix its delegation",
                domain,
            )
        ]
    if answer.outcome == "nodata":
        return [_implicit_mx(lookup, domain)]
    if is_null_mx(answer):
        if len(answer.rdatas) > 1:
            return [
                Finding(
                    "mx",
                    "FAIL",
                    "null MX ('0 .') published together with other MX records",
                    "RFC 7505 section 3: a null MX must be the only MX record; remove one side",
                    domain,
                )
            ]
        return [
            Finding(
                "mx",
                "FAIL",
                "null MX (RFC 7505): the domain accepts no mail, so bounces and replies"
                " to it are lost and receivers may refuse its mail",
                "if this domain sends mail, publish MX hosts that accept its bounces",
                domain,
            )
        ]
    return _check_hosts(lookup, domain, answer)


def _implicit_mx(lookup: Lookup, domain: str) -> Finding:
    addresses = lookup.addresses(domain)
    if addresses.outcome == "error":
        return lookup_error("mx", addresses)
    if addresses.outcome == "ok":
        return Finding(
            "mx",
            "WARN",
            "no MX record; mail goes to the domain's own address (RFC 5321 implicit MX)",
            f"publish an MX record for {domain} naming the host that receives its mail",
            domain,
        )
    return Finding(
        "mx",
        "FAIL",
        "no MX record and no address: the domain cannot receive mail (bounces are lost)",
        f"publish MX records for {domain}",
        domain,
    )


def _check_hosts(lookup: Lookup, domain: str, answer: Answer) -> list[Finding]:
    findings: list[Finding] = []
    records = sorted(answer.rdatas, key=lambda r: (r.preference, r.exchange.to_text()))
    shown: list[str] = []
    for r in records[:MAX_MX_HOSTS]:
        host = r.exchange.to_text(omit_final_dot=True)
        if _is_ip(host):
            findings.append(
                Finding(
                    "mx",
                    "FAIL",
                    f"MX {host} is an IP address, not a host name",
                    "point the MX at a host name with an A/AAAA record (RFC 5321 section 5.1)",
                    domain,
                )
            )
            continue
        addresses = lookup.addresses(host)
        if addresses.outcome == "error":
            findings.append(lookup_error("mx", addresses))
        elif addresses.outcome != "ok":
            findings.append(
                Finding(
                    "mx",
                    "FAIL",
                    f"MX host {host} has no A/AAAA record",
                    f"publish an address for {host} or remove it from the MX records",
                    host,
                )
            )
        else:
            if addresses.canonical:
                findings.append(
                    Finding(
                        "mx",
                        "WARN",
                        f"MX host {host} is an alias (CNAME) of {addresses.canonical}",
                        f"name {addresses.canonical} in the MX record (RFC 2181 section 10.3)",
                        host,
                    )
                )
            shown.append(f"{r.preference} {host} ({', '.join(addresses.addresses()[:4])})")
    if len(records) > MAX_MX_HOSTS:
        findings.append(
            Finding(
                "mx",
                "WARN",
                f"{len(records)} MX records; only the first {MAX_MX_HOSTS} checked",
                "a handful of MX hosts is enough; remove stale ones",
                domain,
            )
        )
    if not findings:
        findings.append(Finding("mx", "PASS", "; ".join(shown), "", domain))
    return findings


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
