"""What a ``doctor`` check reports: PASS, WARN, FAIL or ERROR, with a one-line fix.

The exit status of ``smtpguard doctor`` is derived here, so scripts can tell a
domain with problems from a check that could not run:

====  ===============================================================
0     every check passed
1     warnings only
3     at least one check failed
4     no failure, but a check could not be completed (SERVFAIL, timeout,
      a DNSBL refusing the query)
2     usage error or an unusable resolver (the CLI's convention for
      "fix your command", never a verdict about the domain)
====  ===============================================================

A FAIL outranks an ERROR: a definite problem is news whatever else could not
be checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from smtpguard.ops.dnsquery import Answer

Status = Literal["PASS", "WARN", "FAIL", "ERROR"]

#: Exit status per worst finding (see the module docstring).
EXIT_CODES: dict[str, int] = {"PASS": 0, "WARN": 1, "FAIL": 3, "ERROR": 4}
#: Worst first: the order in which statuses decide the exit status.
SEVERITY: tuple[Status, ...] = ("FAIL", "ERROR", "WARN", "PASS")


@dataclass(frozen=True, slots=True)
class Finding:
    """One verdict of one check, e.g. ``spf.lookups`` FAIL "12 DNS lookups (limit 10)"."""

    check: str  # "mx", "spf.lookups", "dkim:s1", "dnsbl:zen.example", ...
    status: Status
    summary: str  # one line: what was found
    fix: str = ""  # one line: what to do about it ("" when nothing needs doing)
    name: str = ""  # the DNS name examined

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def worst(findings: Iterable[Finding]) -> Status:
    """The most severe status among ``findings`` (PASS when there are none)."""
    seen = {f.status for f in findings}
    return next((s for s in SEVERITY if s in seen), "PASS")


def exit_code(findings: Iterable[Finding]) -> int:
    return EXIT_CODES[worst(findings)]


def lookup_error(check: str, answer: Answer, fix: str = "") -> Finding:
    """The finding for a lookup that failed (SERVFAIL, timeout): no verdict possible."""
    return Finding(
        check,
        "ERROR",
        f"lookup failed: {answer.describe()}",
        fix or "check the zone's name servers answer (dig +trace), then run doctor again",
        answer.name,
    )
