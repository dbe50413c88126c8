"""``smtpguard intake``: feed stored bounces (files, mbox, Maildir, stdin) to the policy."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import plural

if TYPE_CHECKING:
    from smtpguard.config import Config


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="FILE|DIR|MBOX|MAILDIR|-...")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@common_options
def intake(sources: tuple[str, ...], dry_run: bool) -> None:
    """Feed stored bounces through the same pipeline as the intake listener.

    For mailboxes that collected bounces before smtpguard: each message is
    classified; a DSN counts as evidence about its recipient only when it came
    back to a signed return path (intake.bounce_domain; read from Delivered-To,
    X-Original-To or To) made for that recipient (dsn-verified), otherwise it is
    recorded as dsn-unverified and suppresses nobody; ARF reports are
    complaints; auto-replies change nothing. One line per verdict says what
    happened (or, with --dry-run, what would).

    \b
    Examples:
      smtpguard intake --dry-run ~/Maildir/.Bounces
      smtpguard intake /var/mail/bounces            # an mbox
      smtpguard intake - < returned.eml
    """
    cfg = get_config()
    counts = asyncio.run(_run(cfg, sources, dry_run))
    summary = ", ".join(f"{n} {what}" for what, n in counts.items() if what != "messages")
    verb = "would feed" if dry_run else "fed"
    click.echo(
        f"{verb} {plural(counts['messages'], 'message', 'messages')}"
        + (f": {summary}" if summary else ""),
        err=True,
    )


async def _run(cfg: Config, sources: tuple[str, ...], dry_run: bool) -> Counter[str]:
    from smtpguard.intake.feed import feed
    from smtpguard.intake.verp import SignedVerpCodec
    from smtpguard.policy import open_sink
    from smtpguard.relay.server import load_classifier
    from smtpguard.store.sent import SentLookup

    classifier = load_classifier(cfg)
    codec = SignedVerpCodec.from_config(cfg.intake)
    sink = await open_sink(cfg)
    sent = SentLookup.open(cfg.data_dir, busy_timeout=cfg.store.busy_timeout)
    try:
        return await feed(
            sources,
            sink=sink,
            classifier=classifier,
            codec=codec,
            sent=sent,
            dry_run=dry_run,
            emit=click.echo,
        )
    finally:
        sent.close()
        with contextlib.suppress(Exception):
            await sink.close()
