"""The `modelyard serve` process: embedded Redis when none is given, the gateway, uvicorn, clean shutdown.

On SIGTERM or SIGINT the listening socket closes, requests in flight finish (up to `shutdown_grace`),
last-used times are flushed, and what the process started (the embedded Redis) is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator

import redis.asyncio as aioredis
import uvicorn

from gateway.app import Gateway
from gateway.embedded_redis import RedisServer
from gateway.settings import Settings

log = logging.getLogger("modelyard")
HANDLED = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the signal after serving, which would end the process before modelyard stops
        # what it started; here the signal only asks for a graceful exit.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call is noise
    embedded: RedisServer | None = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = RedisServer()
        embedded.start()
        redis_url = embedded.url
        log.warning(
            "no --redis-url given: started an embedded Redis at %s (pid %s) for single-gateway use; "
            "its state goes when this gateway stops. Give several gateways one --redis-url to share state.",
            redis_url,
            embedded.pid,
        )
    try:
        _run_loop(_serve(settings, redis_url))
    finally:
        if embedded is not None:
            embedded.stop()
            log.info("embedded Redis stopped")
    return 0


def _run_loop(main: object) -> None:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]


async def _serve(settings: Settings, redis_url: str) -> None:
    client = aioredis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=30)
    gateway = Gateway(settings, client)
    config = uvicorn.Config(
        gateway,
        host=settings.host,
        port=settings.http_port,
        lifespan="off",
        http="httptools",
        loop="none",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        backlog=2048,
    )
    server = _Server(config)
    gateway.start_in_background()
    log.info("modelyard gateway on http://%s:%d (data plane, /admin, /metrics)", settings.host, settings.http_port)
    try:
        await server.serve()
    finally:
        await gateway.stop()
        log.info("gateway stopped")
