"""An asyncio event loop in a thread of its own, for async seams called from libmilter's threads.

The verdict sink is asynchronous (it shares its store helpers with the relay's
event loop); libmilter calls the milter from one thread per SMTP session. Those
threads hand coroutines to this loop and wait, bounded, for the result.

The thread is started with SIGTERM, SIGINT and SIGHUP blocked: libmilter takes
those signals with ``sigwait`` in a thread of its own to shut down cleanly, and a
thread that leaves them unblocked would receive SIGTERM instead and kill the
process the hard way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: The signals libmilter handles itself.
MILTER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class BackgroundLoop:
    """``submit(coro)`` from any thread; ``run(coro, timeout)`` waits for it; ``stop()``."""

    def __init__(self, name: str = "smtpguard-loop") -> None:
        self.loop = asyncio.new_event_loop()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, MILTER_SIGNALS)
        try:
            # A new thread inherits the creating thread's signal mask.
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """The coroutine's result; TimeoutError after ``timeout`` (it keeps running)."""
        return self.submit(coro).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop once what is scheduled now has run; close it."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
