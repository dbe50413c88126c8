"""The webhook listener: one aiohttp application, one ``POST /<provider>`` route per ESP.

Every request goes the same way: the body is read up to ``webhooks.max_body`` (413
beyond), the provider authenticates it (a signature or basic auth: 403 / 401, and
nothing changes), parses it (400 when malformed) and turns its events into classifier
verdicts; the verdicts go to the :class:`VerdictSink` with actor ``webhook:<provider>``
and evidence ``webhook``, except spam complaints (``feedback`` verdicts): an ESP passes
on a mailbox provider's feedback-loop report, so they are ``arf`` evidence, the kind
the policy turns into ``complaint`` entries. A recipient's unsubscribe (SendGrid's
``unsubscribe`` and ``group_unsubscribe``, Postmark's ``SubscriptionChange`` from the
recipient) is a verdict with reason ``unsubscribe`` under ``webhook`` evidence: the
policy takes that reason from a signed ESP event only, and makes it an ``unsubscribe``
entry. A storage failure answers 503, so the ESP
delivers the event again later (all three retry on 5xx): an event is never lost (one
delivered twice only counts its sightings twice).

A provider is on when its keys are configured: ``/ses`` with ``ses_topic_arns``,
``/sendgrid`` with ``sendgrid_public_key``, ``/postmark`` with ``postmark_user``; other
paths are 404. The listener speaks plain HTTP: it belongs on loopback behind the TLS
proxy that faces the ESPs (``webhooks.listen``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from smtpguard.classify import Classifier, Verdict, default_classifier
from smtpguard.errors import UserError
from smtpguard.intake.webhooks.request import Refused
from smtpguard.policy import Evidence
from smtpguard.policy.sink import VerdictSink

if TYPE_CHECKING:
    from smtpguard.config import WebhooksConfig
    from smtpguard.intake.webhooks.fetch import Fetch
    from smtpguard.intake.webhooks.sns import CertificateSource

log = logging.getLogger("smtpguard.webhooks")

Clock = Callable[[], float]


class Provider(Protocol):
    """One ESP: authenticate and parse a request, return its verdicts and a note."""

    name: str

    async def verdicts(self, request: web.Request, body: bytes) -> tuple[list[Verdict], str]: ...


def providers_from_config(
    cfg: WebhooksConfig,
    *,
    classifier: Classifier,
    certificates: CertificateSource | None = None,
    fetch: Fetch | None = None,
    clock: Clock = time.time,
) -> list[Provider]:
    """The providers the configuration switches on (secret files are read here)."""
    from smtpguard.intake.keys import load_ec_public_key, secret_setting

    out: list[Provider] = []
    if cfg.ses_topic_arns:
        from smtpguard.intake.webhooks.fetch import HttpsFetcher
        from smtpguard.intake.webhooks.ses import SesWebhook
        from smtpguard.intake.webhooks.sns import DirectoryCertificates, FetchedCertificates

        fetch = fetch or HttpsFetcher()  # the caller closes one it did not pass
        if certificates is None:
            certificates = (
                DirectoryCertificates(cfg.sns_certificate_dir)
                if cfg.sns_certificate_dir
                else FetchedCertificates(fetch)
            )
        out.append(
            SesWebhook(
                frozenset(cfg.ses_topic_arns),
                certificates,
                fetch if cfg.sns_confirm_subscriptions else None,
                classifier,
                clock=clock,
            )
        )
    if cfg.sendgrid_public_key:
        from smtpguard.intake.webhooks.sendgrid import SendgridWebhook

        key = load_ec_public_key(cfg.sendgrid_public_key)
        out.append(SendgridWebhook(key, cfg.sendgrid_max_age, classifier, clock=clock))
    if cfg.postmark_user:
        from smtpguard.intake.webhooks.postmark import PostmarkWebhook

        password = secret_setting(
            cfg.postmark_password, cfg.postmark_password_file, "webhooks.postmark_password"
        )
        out.append(PostmarkWebhook(cfg.postmark_user, password, classifier))
    return out


def make_app(
    cfg: WebhooksConfig,
    sink: VerdictSink,
    *,
    classifier: Classifier | None = None,
    certificates: CertificateSource | None = None,
    fetch: Fetch | None = None,
    clock: Clock = time.time,
) -> web.Application:
    """The application for the configured providers, feeding ``sink``.

    ``certificates`` and ``fetch`` replace how SNS certificates are had and how
    subscription confirmations are visited (tests; hosts with a certificate directory).
    """
    classifier = classifier or default_classifier()
    app = web.Application(client_max_size=cfg.max_body)
    if fetch is None and cfg.ses_topic_arns:
        from smtpguard.intake.webhooks.fetch import HttpsFetcher

        own = HttpsFetcher()
        fetch = own

        async def close_fetcher(_app: web.Application) -> None:
            await own.close()

        app.on_cleanup.append(close_fetcher)
    providers = providers_from_config(
        cfg, classifier=classifier, certificates=certificates, fetch=fetch, clock=clock
    )
    for provider in providers:
        app.router.add_post(f"/{provider.name}", _handler(provider, sink))
    return app


def _handler(provider: Provider, sink: VerdictSink) -> Callable[[web.Request], object]:
    actor = f"webhook:{provider.name}"

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()  # 413 beyond client_max_size
        try:
            verdicts, note = await provider.verdicts(request, body)
        except Refused as e:
            log.warning("%s: refused (%d) from %s: %s", actor, e.status, request.remote, e)
            return web.json_response({"error": e.message}, status=e.status, headers=e.headers)
        if not verdicts:
            return web.json_response({"verdicts": 0})
        outcomes: Counter[str] = Counter()
        complaints = [v for v in verdicts if v.reason == "feedback"]
        others = [v for v in verdicts if v.reason != "feedback"]
        try:
            for batch, kind in ((complaints, "arf"), (others, "webhook")):
                if batch:
                    evidence = Evidence(kind=kind, actor=actor, note=note)  # type: ignore[arg-type]
                    report = await sink.accept(batch, evidence)
                    outcomes.update(a.outcome for a in report.applied)
        except UserError as e:  # the store: locked, full, corrupt; the ESP retries
            log.error("%s: cannot record %d verdicts: %s", actor, len(verdicts), e)
            return web.json_response({"error": "cannot record now, retry"}, status=503)
        log.info("%s: %d verdicts (%s) %s", actor, len(verdicts), dict(outcomes), note)
        return web.json_response({"verdicts": len(verdicts), "outcomes": dict(outcomes)})

    return handle
