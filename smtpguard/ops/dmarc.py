"""``doctor`` DMARC check: the policy at ``_dmarc.<domain>`` (RFC 7489).

Records that do not start with ``v=DMARC1`` are ignored (section 6.6.3); more
than one valid record means no policy at all. ``p=none`` only monitors;
``pct`` below 100 applies the policy to part of the failing mail; without
``rua`` the owner gets no aggregate reports. Reports to another domain need
that domain's consent: ``<domain>._report._dmarc.<other>`` (section 7.1).

When the domain has no record of its own, the organizational domain's applies
(section 6.6.3). Finding it exactly needs the Public Suffix List; this check
walks up the parents that still have two labels, which is right for every
domain directly under a one-label suffix (``.com``, ``.de``), and reports the
parent it used.
"""

from __future__ import annotations

import re

from smtpguard.ops.dnsquery import Lookup
from smtpguard.ops.findings import Finding, lookup_error
from smtpguard.ops.tagvalue import parse_tags

_POLICIES = ("none", "quarantine", "reject")
_VERSION = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")
#: rua/ruf URIs checked for an external-destination authorization.
MAX_URIS = 5


def check_dmarc(lookup: Lookup, domain: str) -> list[Finding]:
    name = f"_dmarc.{domain}"
    answer = lookup.query(name, "TXT")
    if answer.outcome == "error":
        return [lookup_error("dmarc", answer)]
    records = [t for t in answer.texts() if _VERSION.match(t)]
    if not records:
        return _inherited(lookup, domain)
    if len(records) > 1:
        return [
            Finding(
                "dmarc",
                "FAIL",
                f"{len(records)} DMARC records at {name}: receivers apply none",
                "publish exactly one v=DMARC1 record",
                name,
            )
        ]
    return judge_record(lookup, domain, name, records[0], policy_tag="p")


def _inherited(lookup: Lookup, domain: str) -> list[Finding]:
    missing = Finding(
        "dmarc",
        "FAIL",
        f"no DMARC record at _dmarc.{domain}",
        f"publish 'v=DMARC1; p=none; rua=mailto:dmarc@{domain}', then tighten to"
        " quarantine/reject once the reports show your mail aligned",
        f"_dmarc.{domain}",
    )
    labels = domain.split(".")
    for i in range(1, len(labels) - 1):
        parent = ".".join(labels[i:])
        answer = lookup.query(f"_dmarc.{parent}", "TXT")
        records = [t for t in answer.texts() if _VERSION.match(t)]
        if len(records) == 1:
            found = judge_record(lookup, domain, f"_dmarc.{parent}", records[0], policy_tag="sp")
            return [
                Finding(
                    "dmarc",
                    "WARN",
                    f"no record at _dmarc.{domain};"
                    f" the organizational domain's _dmarc.{parent} applies",
                    f"fine if intended; publish _dmarc.{domain} for a policy of its own",
                    f"_dmarc.{domain}",
                ),
                *found,
            ]
    return [missing]


def judge_record(
    lookup: Lookup, domain: str, name: str, record: str, *, policy_tag: str
) -> list[Finding]:
    """Findings for one DMARC record; ``policy_tag`` "sp" when it applies to a subdomain
    (then ``sp=`` rules, falling back to ``p=``)."""
    try:
        tags = dict(parse_tags(record))
    except ValueError as e:
        return [Finding("dmarc", "FAIL", f"syntax error: {e}", "fix the record's syntax", name)]
    problems = _syntax(tags)
    if problems:
        return [Finding("dmarc", "FAIL", f"invalid: {problems}", "fix the record's tags", name)]
    policy = tags.get(policy_tag) or tags["p"]
    pct = int(tags.get("pct", "100"))
    shown = f"p={tags['p']}" + "".join(
        f" {k}={tags[k]}" for k in ("sp", "pct", "adkim", "aspf") if k in tags
    )
    findings: list[Finding] = []
    if policy == "none":
        findings.append(
            Finding(
                "dmarc",
                "WARN",
                f"{shown}: monitoring only, spoofed mail is still delivered",
                "move to p=quarantine, then p=reject, once the reports show your mail aligned",
                name,
            )
        )
    elif pct < 100:
        findings.append(
            Finding(
                "dmarc",
                "WARN",
                f"{shown}: the policy covers only {pct}% of failing mail",
                "raise pct to 100 (or remove it) once the reports are clean",
                name,
            )
        )
    else:
        findings.append(Finding("dmarc", "PASS", shown, "", name))
    findings += _reports(lookup, domain, name, tags)
    return findings


def _syntax(tags: dict[str, str]) -> str:
    """What is wrong with the tags, or "" (RFC 7489 section 6.3)."""
    if "p" not in tags:
        return "no p= policy"
    for key in ("p", "sp"):
        if key in tags and tags[key] not in _POLICIES:
            return f"{key}={tags[key]} (expected none, quarantine or reject)"
    for key in ("adkim", "aspf"):
        if key in tags and tags[key] not in ("r", "s"):
            return f"{key}={tags[key]} (expected r or s)"
    pct = tags.get("pct", "100")
    if not pct.isdigit() or not 0 <= int(pct) <= 100:
        return f"pct={pct} (expected 0-100)"
    return ""


def _reports(lookup: Lookup, domain: str, name: str, tags: dict[str, str]) -> list[Finding]:
    rua = [u.strip() for u in tags.get("rua", "").split(",") if u.strip()]
    if not rua:
        return [
            Finding(
                "dmarc.rua",
                "WARN",
                "no rua=: nobody receives aggregate reports",
                f"add rua=mailto:dmarc@{domain} (or a report service's address)",
                name,
            )
        ]
    findings: list[Finding] = []
    for uri in rua[:MAX_URIS]:
        if not uri.lower().startswith("mailto:"):
            findings.append(
                Finding(
                    "dmarc.rua",
                    "WARN",
                    f"rua {uri}: receivers send reports to mailto: URIs only",
                    "use a mailto: address",
                    name,
                )
            )
            continue
        address = uri[7:].split("!", 1)[0]  # "!10m" is a size limit
        target = address.rpartition("@")[2].lower().rstrip(".")
        if not target or target == domain or domain.endswith("." + target):
            continue
        auth_name = f"{domain}._report._dmarc.{target}"
        answer = lookup.query(auth_name, "TXT")
        if answer.outcome == "error":
            findings.append(lookup_error("dmarc.rua", answer))
        elif not any(_VERSION.match(t) for t in answer.texts()):
            findings.append(
                Finding(
                    "dmarc.rua",
                    "WARN",
                    f"{target} has not authorized reports for {domain} (no {auth_name})",
                    f"ask {target} to publish 'v=DMARC1' at {auth_name} (RFC 7489 section 7.1)",
                    auth_name,
                )
            )
    if not findings:
        findings.append(Finding("dmarc.rua", "PASS", f"rua={','.join(rua)}", "", name))
    return findings
