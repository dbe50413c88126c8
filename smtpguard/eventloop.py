"""Which event loop a long-running command runs on: uvloop where it helps, asyncio otherwise.

The relay's CPU per message is what limits it behind Postfix (every message
crosses the loop a few dozen times: accept, reads, replies, timers, the
writer thread's wake-ups). uvloop does the loop's own work (selector,
transports, handles, timers) in C on libuv and cut the relay's CPU per
message by about a sixth in ``benchmarks/relay_throughput.py`` (see its
docstring for numbers). It is optional: ``relay.event_loop = "auto"`` uses it
when the package is installed and falls back to asyncio's own loop, which
behaves the same, only slower. ``"uvloop"`` insists (a one-line error
without it), ``"asyncio"`` never uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from smtpguard.errors import UserError

T = TypeVar("T")

#: The choices of ``relay.event_loop``.
CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(name of the loop, factory for :class:`asyncio.Runner`; None: asyncio's default)."""
    if choice not in CHOICES:
        raise UserError(f"relay.event_loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UserError(
                "relay.event_loop is uvloop but the uvloop package is not installed"
            ) from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    _, factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def current_loop_name() -> str:
    """ "uvloop" or "asyncio": what the running loop is (for the start-up log line)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
