"""relay.event_loop: uvloop when installed (auto), asyncio on request, a clear error otherwise."""

from __future__ import annotations

import asyncio

import pytest

from smtpguard import config
from smtpguard.errors import ConfigError, UserError
from smtpguard.eventloop import current_loop_name, loop_factory, run


async def _loop_name() -> str:
    await asyncio.sleep(0)
    return current_loop_name()


def test_auto_runs_the_relay_on_uvloop_when_it_is_installed() -> None:
    assert loop_factory("auto")[0] == "uvloop"
    assert run(_loop_name(), "auto") == "uvloop"


def test_asyncio_choice_runs_on_the_standard_loop() -> None:
    assert loop_factory("asyncio") == ("asyncio", None)
    assert run(_loop_name(), "asyncio") == "asyncio"


def test_unknown_event_loop_in_the_config_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "smtpguard.toml"
    path.write_text('[relay]\nevent_loop = "tokio"\n')
    with pytest.raises(ConfigError, match="event_loop"):
        config.load(path)


def test_unknown_event_loop_passed_directly_is_a_user_error() -> None:
    with pytest.raises(UserError, match="event_loop"):
        loop_factory("tokio")
