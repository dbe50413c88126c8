"""``smtpguard doctor``: every DNS and reputation check of a sending domain, in one report.

The checks are independent (MX, SPF, DKIM per selector, DMARC; with an IP
also PTR and DNSBL) and run concurrently over one cached resolver; the report
keeps their order. Checks that need an input the operator did not give (an IP,
a selector) are listed as skipped rather than silently passing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from smtpguard.address import normalize_domain
from smtpguard.errors import UserError
from smtpguard.ops.dkim import check_dkim
from smtpguard.ops.dmarc import check_dmarc
from smtpguard.ops.dnsbl import check_dnsbl
from smtpguard.ops.dnsquery import Lookup
from smtpguard.ops.findings import Finding, exit_code, worst
from smtpguard.ops.mx import check_mx
from smtpguard.ops.ptr import check_ptr
from smtpguard.ops.spf import check_spf

_SELECTOR = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63}){0,4}")


@dataclass(frozen=True)
class DoctorRequest:
    """What to check: validated by :meth:`make` (bad input raises UserError)."""

    domain: str
    ip: str | None = None
    selectors: tuple[str, ...] = ()
    dnsbl_zones: tuple[str, ...] = ()

    @classmethod
    def make(
        cls,
        domain: str,
        ip: str | None = None,
        selectors: tuple[str, ...] | list[str] = (),
        dnsbl_zones: tuple[str, ...] | list[str] = (),
    ) -> DoctorRequest:
        name = normalize_domain(domain.strip().rstrip("."))
        if name.startswith("["):
            raise UserError(f"{domain}: a domain name, not an address literal")
        if ip is not None:
            try:
                ip = str(ipaddress.ip_address(ip.strip()))
            except ValueError:
                raise UserError(f"--ip: {ip!r} is not an IP address") from None
        for s in selectors:
            if not _SELECTOR.fullmatch(s):
                raise UserError(f"--selector: {s!r} is not a DKIM selector (letters, digits, -, _)")
        zones = tuple(normalize_domain(z.strip().rstrip(".")) for z in dnsbl_zones)
        return cls(name, ip, tuple(dict.fromkeys(selectors)), tuple(dict.fromkeys(zones)))


@dataclass
class DoctorReport:
    domain: str
    ip: str | None
    resolver: str
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def worst(self) -> str:
        return worst(self.findings)

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "WARN": 0, "FAIL": 0, "ERROR": 0}
        for f in self.findings:
            out[f.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "ip": self.ip,
            "resolver": self.resolver,
            "worst": self.worst,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "skipped": self.skipped,
        }


def run(lookup: Lookup, request: DoctorRequest) -> DoctorReport:
    """Probe the resolver (ResolverError if it is dead), then run every applicable check."""
    lookup.probe()
    domain, ip = request.domain, request.ip
    checks: list[Callable[[], list[Finding]]] = [
        lambda: check_mx(lookup, domain),
        lambda: check_spf(lookup, domain, ip),
        *(lambda s=s: check_dkim(lookup, domain, s) for s in request.selectors),
        lambda: check_dmarc(lookup, domain),
    ]
    skipped: list[str] = []
    if not request.selectors:
        skipped.append("dkim: no selector given (--selector S or doctor.dkim_selectors)")
    if ip is not None:
        checks.append(lambda: check_ptr(lookup, ip))
        zones = list(request.dnsbl_zones)
        checks.append(lambda: check_dnsbl(lookup, ip, zones))
        if not zones:
            skipped.append("dnsbl: no zones (--dnsbl ZONE or doctor.dnsbl_zones)")
    else:
        skipped.append("spf.ip, ptr, dnsbl: no sending IP given (--ip IP)")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda check: check(), checks))
    report = DoctorReport(domain, ip, lookup.described, skipped=skipped)
    for found in results:
        report.findings.extend(found)
    return report
