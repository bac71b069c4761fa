"""`modelyard serve --config FILE`: the fleet file applied once the gateway is ready, through its own admin API
with the same code as `modelyard apply` (no prune: what was added through the API since stays). The file was
checked before the gateway started (`fleet.check_file`); a change the gateway refuses is logged as an error
and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.ctl.client import AdminClient
from gateway.ctl.errors import CtlError
from gateway.ctl.fleet import load_fleet
from gateway.ctl.plan import execute, hold_rollouts, make_plan

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.settings import Settings

log = logging.getLogger("modelyard.config")


class _LogLines(io.StringIO):
    """A text stream whose lines go to the log."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.log(self.level, "--config: %s", line, extra={"event": "config"})
        return len(text)


def apply_file(url: str, token: str, path: str) -> None:
    client = AdminClient(url, token)
    try:
        plan = hold_rollouts(client, make_plan(load_fleet(path), client.fleet(), False, path))
        execute(client, plan, out=_LogLines(logging.INFO), err=_LogLines(logging.DEBUG))
    finally:
        client.close()


async def apply_config_when_ready(gateway: Gateway, settings: Settings, listening: Callable[[], bool]) -> None:
    """Once the gateway has synced with Redis and its HTTP server listens (`listening()`), apply the file."""
    assert settings.config is not None
    while not (gateway.dataplane.ready and listening()):  # noqa: ASYNC110 (flags set once, no event to wait on)
        await asyncio.sleep(0.05)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.http_port}"
    log.info("applying the fleet file %s", settings.config, extra={"event": "config"})
    try:
        await asyncio.to_thread(apply_file, url, settings.admin_token, settings.config)
    except CtlError as exc:
        log.error("--config %s: not applied whole: %s", settings.config, exc, extra={"event": "config"})
        return
    log.info("fleet file %s applied", settings.config, extra={"event": "config"})
