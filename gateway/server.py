"""The `modelyard serve` process: embedded Redis when none is given, the gateway, uvicorn and the gRPC server
in one event loop, clean shutdown.

The gRPC port is bound first: when it is taken the process exits at once with a message saying so. On
SIGTERM or SIGINT both listening sockets close, requests in flight on either finish (up to
`shutdown_grace`), last-used times are flushed, and what the process started (the embedded Redis) is stopped.
The embedded Redis keeps its append-only file in `--data-dir`, locked (`DataDirLock`) against a second
gateway; `--config` is applied once the gateway is ready (`gateway.ctl.serve_config`).
With `--workers N` (N > 1) this process supervises N such gateways on the same ports instead (gateway.workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType

import grpc.aio
import uvicorn

from gateway.app import Gateway
from gateway.ctl.serve_config import apply_config_when_ready
from gateway.embedded_redis import DataDirLock, DataDirLocked, RedisServer, start_persistent
from gateway.grpc_dataplane import GrpcPortError, build_server
from gateway.grpc_threads import ThreadedGrpcServer
from gateway.http_dataplane import HttpDataPlane
from gateway.logs import configure as configure_logging
from gateway.settings import Settings
from gateway.tracing import Tracing, provider_from_env
from gateway.workers import WorkerHeader, reuseport_grpc_server, reuseport_socket, supervise
from placement.redis_health import client as redis_client

log = logging.getLogger("modelyard")

# The uvicorn releases the HTTP fast path (gateway/http_fast.py, built on uvicorn's httptools protocol class and its
# internals) was built and tested on; constraints.txt pins one of them.
FAST_PATH_UVICORN = ("0.54.",)


def http_protocol(max_body: int) -> type[asyncio.Protocol] | str:
    """uvicorn's `http` setting: the data plane's fast path on a uvicorn it was tested on, else uvicorn's own
    httptools protocol (everything behaves the same; only the short path's saving is lost), said once in the log."""
    version = uvicorn.__version__
    if version.startswith(FAST_PATH_UVICORN):
        try:
            from gateway.http_fast import data_plane_protocol
        except ImportError as exc:  # uvicorn's internals moved
            log.warning("HTTP fast path off: uvicorn %s lacks what it is built on (%s)", version, exc)
        else:
            return data_plane_protocol(HttpDataPlane.handles, max_body)
    else:
        log.warning("HTTP fast path off: uvicorn %s is not a release it was tested on (%s)", version, FAST_PATH_UVICORN)
    return "httptools"


HANDLED = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    on_exit: Callable[[], None] = staticmethod(lambda: None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()  # readiness goes false first, so probes see the drain
        super().handle_exit(sig, frame)

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
    if settings.workers > 1:
        return supervise(settings)
    configure_logging(settings.log_level, settings.log_format)
    try:
        tracing = Tracing(provider_from_env(os.environ))
    except ValueError as exc:
        raise SystemExit(f"modelyard: {exc}") from None
    if tracing.enabled:
        log.info("exporting traces with OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT is set)")
    embedded: RedisServer | None = None
    lock: DataDirLock | None = None
    redis_url = settings.redis_url
    if not redis_url:
        data_dir = Path(settings.data_dir).resolve()
        try:
            embedded, lock = start_persistent(data_dir)
        except (DataDirLocked, OSError) as exc:  # one line on stderr, exit status 1
            raise SystemExit(f"modelyard: {exc}") from None
        redis_url = embedded.url
        log.warning(
            "no --redis-url given: started an embedded Redis at %s (pid %s) for single-gateway use; it keeps "
            "the registry in %s (delete that directory to start afresh). Give several gateways one --redis-url "
            "to share state.",
            redis_url,
            embedded.pid,
            data_dir,
        )
    try:
        _run_loop(_serve(settings, redis_url, tracing))
    finally:
        tracing.shutdown()
        if embedded is not None:
            embedded.stop()  # SIGTERM: Redis writes the rest of its append-only file and exits
            log.info("embedded Redis stopped")
        if lock is not None:
            lock.release()
    return 0


def _run_loop(main: object) -> None:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]


async def _serve(settings: Settings, redis_url: str, tracing: Tracing) -> None:
    client = redis_client(redis_url)  # every command bounded in time (placement.redis_health)
    gateway = Gateway(settings, client, tracing=tracing)
    worker = settings.worker_index
    grpc_server: grpc.aio.Server | ThreadedGrpcServer
    try:
        if settings.grpc_server == "threads":  # SO_REUSEPORT on in one of --workers, as below
            grpc_server = ThreadedGrpcServer(gateway.grpc, settings, reuseport=worker is not None)
        elif worker is None:
            grpc_server = build_server(gateway.grpc, settings)
        else:  # one of --workers: the port is shared with the other workers
            grpc_server = reuseport_grpc_server(gateway.grpc.handlers(), settings)
    except GrpcPortError as exc:
        log.error("%s", exc)
        await client.aclose()
        raise SystemExit(f"modelyard: {exc}") from None
    config = uvicorn.Config(
        gateway if worker is None else WorkerHeader(gateway, worker),
        host=settings.host,
        port=settings.http_port,
        lifespan="off",
        http=http_protocol(settings.max_body_bytes),  # one write per data-plane answer, where it can
        loop="none",
        access_log=False,
        log_config=None,  # uvicorn's lines go through modelyard's handler (JSON or text, --log-format)
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        backlog=2048,
    )
    server = _Server(config)
    server.on_exit = gateway.drain
    await grpc_server.start()
    grpc_stopping = asyncio.create_task(_stop_grpc_on_exit(server, grpc_server, settings.shutdown_grace))
    gateway.start_in_background()
    applying = (  # one of --workers applies the fleet file for all of them
        asyncio.create_task(apply_config_when_ready(gateway, settings, lambda: server.started))
        if settings.config and not worker
        else None
    )
    log.info("modelyard gateway on http://%s:%d (data plane, /admin, /metrics)", settings.host, settings.http_port)
    log.info("modelyard gRPC data plane on %s:%d (inference.GRPCInferenceService)", settings.host, settings.grpc_port)
    try:
        await server.serve(sockets=None if worker is None else [reuseport_socket(settings.host, settings.http_port)])
    finally:
        if not server.should_exit:  # uvicorn ended on its own (it could not start): stop gRPC now
            server.should_exit = True
        await grpc_stopping
        if applying is not None:
            applying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applying
        await gateway.stop()
        log.info("gateway stopped")


async def _stop_grpc_on_exit(
    server: uvicorn.Server, grpc_server: grpc.aio.Server | ThreadedGrpcServer, grace: float
) -> None:
    """Stop the gRPC server when uvicorn is asked to exit, so both drain their requests at the same time."""
    while not server.should_exit:  # noqa: ASYNC110 (uvicorn's exit request is a flag it polls the same way)
        await asyncio.sleep(0.1)
    await grpc_server.stop(grace)
