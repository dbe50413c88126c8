"""``smtpguard doctor``: check a sending domain's DNS and reputation.

Thin by design: parse the options, run :mod:`smtpguard.ops.doctor`, render.
Exit status: 0 all PASS, 1 warnings, 3 a check failed, 4 a check could not be
completed (and none failed), 2 bad arguments or a resolver that does not
answer (see :mod:`smtpguard.ops.findings`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import cell, console, emit_json, format_option

if TYPE_CHECKING:  # the checks load when the command runs, not when the CLI starts
    from smtpguard.ops.doctor import DoctorReport

STYLES = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "ERROR": "magenta"}


@click.command()
@click.argument("domain")
@click.option("--ip", metavar="IP", help="The sending IP: SPF evaluation, PTR and DNSBL checks.")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    metavar="S",
    help="DKIM selector to check; repeatable (default: doctor.dkim_selectors).",
)
@click.option(
    "--dnsbl",
    "zones",
    multiple=True,
    metavar="ZONE",
    help="DNS block list zone; repeatable, replaces doctor.dnsbl_zones.",
)
@click.option(
    "--nameserver",
    "nameservers",
    multiple=True,
    metavar="IP[:PORT]",
    help="DNS server to ask; repeatable (default: delivery.nameservers, else /etc/resolv.conf).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60),
    metavar="SECONDS",
    help="Time limit per DNS lookup (default: doctor.timeout).",
)
@format_option("table", "json")
@common_options
def doctor(
    domain: str,
    ip: str | None,
    selectors: tuple[str, ...],
    zones: tuple[str, ...],
    nameservers: tuple[str, ...],
    timeout: float | None,
    fmt: str,
) -> None:
    """Check DOMAIN's MX, SPF, DKIM and DMARC, and with --ip the IP's PTR and DNSBL listings.

    Every check prints PASS, WARN, FAIL or ERROR (the check could not be
    completed) with a one-line fix.

    \b
    Exit status: 0 all passed, 1 warnings, 3 something failed,
    4 a check could not be completed, 2 bad arguments or no working resolver.

    \b
    Examples:
      smtpguard doctor example.com --ip 192.0.2.25 --selector s2024
      smtpguard doctor example.com --nameserver 127.0.0.1:5353 --format json
    """
    from smtpguard.ops.dnsquery import Lookup
    from smtpguard.ops.doctor import DoctorRequest, run

    cfg = get_config()
    request = DoctorRequest.make(
        domain,
        ip,
        selectors or tuple(cfg.doctor.dkim_selectors),
        zones or tuple(cfg.doctor.dnsbl_zones),
    )
    lookup = Lookup(nameservers or cfg.delivery.nameservers, timeout=timeout or cfg.doctor.timeout)
    report = run(lookup, request)
    if fmt == "json":
        emit_json(report.to_dict())
    else:
        _table(report)
    sys.exit(report.exit_code)


def _table(report: DoctorReport) -> None:
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for name in ("check", "status", "result", "fix"):
        table.add_column(name, no_wrap=name in ("check", "status"))
    for f in report.findings:
        table.add_row(cell(f.check), cell(f.status, STYLES[f.status]), cell(f.summary), cell(f.fix))
    out = console()
    out.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    out.print(cell(f"{report.domain}: {counts} (exit {report.exit_code})"))
    for note in report.skipped:
        out.print(cell(f"not checked: {note}", "dim"))
