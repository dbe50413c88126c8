"""Running the webhook listener: inside the relay (``smtpguard serve``) or on its own
(``smtpguard webhooks serve``).

Inside the relay it shares the relay's sink, so webhook suppressions go through the one
writer of the process; on its own it opens a sink of its own (the database is shared
across processes like the CLI's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from smtpguard.config import parse_hostport
from smtpguard.errors import UserError
from smtpguard.intake.webhooks.app import make_app

if TYPE_CHECKING:
    from smtpguard.classify import Classifier
    from smtpguard.config import Config
    from smtpguard.policy.sink import VerdictSink

log = logging.getLogger("smtpguard.webhooks")


class WebhookServer:
    """The aiohttp application for ``cfg.webhooks`` on ``webhooks.listen``."""

    def __init__(
        self, cfg: Config, sink: VerdictSink, *, classifier: Classifier | None = None
    ) -> None:
        w = cfg.webhooks
        if not (w.ses_topic_arns or w.sendgrid_public_key or w.postmark_user):
            raise UserError(
                "no webhook provider is configured: set webhooks.ses_topic_arns, "
                "webhooks.sendgrid_public_key or webhooks.postmark_user"
            )
        self.host, self.port = parse_hostport(w.listen)
        self._app = make_app(w, sink, classifier=classifier)
        self._runner: web.AppRunner | None = None

    @property
    def routes(self) -> list[str]:
        return sorted(r.resource.canonical for r in self._app.router.routes() if r.resource)

    async def start(self) -> None:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise UserError(
                f"cannot listen for webhooks on {self.host}:{self.port}: {e.strerror or e}"
            ) from None
        self._runner = runner
        server = site._server
        if server is not None and self.port == 0:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("webhooks: listening on %s:%d (%s)", self.host, self.port, " ".join(self.routes))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serve_webhooks(
    cfg: Config, *, on_listening: Callable[[str, int], None] | None = None
) -> int:
    """Run the listener alone until SIGTERM/SIGINT; returns the exit code."""
    from smtpguard.policy import open_sink
    from smtpguard.relay.server import load_classifier

    classifier = load_classifier(cfg)
    sink = await open_sink(cfg)
    try:
        server = WebhookServer(cfg, sink, classifier=classifier)
        await server.start()
        if on_listening is not None:
            on_listening(server.host, server.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
    finally:
        with contextlib.suppress(Exception):
            await sink.close()
    return 0
