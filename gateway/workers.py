"""`modelyard serve --workers N`: N gateway processes on the same HTTP and gRPC ports, behaving as one gateway.

The parent process serves nothing itself. It checks that both ports are free, starts the embedded Redis once
when no `--redis-url` is given (the parent's lifetime owns it: it is stopped after the last worker), then starts
N workers (fresh interpreters, `multiprocessing` spawn) with the same settings, that Redis, and `worker_index`
set. Each worker is a whole gateway (`gateway.server.run`) listening with SO_REUSEPORT, so the kernel spreads
new connections over them; they share every state through Redis, as separate `modelyard serve` processes do
(a cold model is loaded once, under the Redis lease).

Signals: SIGTERM or SIGINT to the parent is passed to every worker as SIGTERM (each drains its requests, up to
`--shutdown-grace`); the parent then stops the embedded Redis and exits 0.
A worker that exits on its own is started again. When workers keep dying young (`CRASH_LOOP` exits within
`YOUNG_S` of their start in a row: a port taken after all, a broken setting), the parent stops every worker and
exits 1 instead of restarting forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.embedded_redis import DataDirLock, DataDirLocked, RedisServer, start_persistent
from gateway.logs import configure as configure_logging
from gateway.settings import Settings

if TYPE_CHECKING:  # grpc is imported where it is used: `modelyard serve --help` stays light
    import grpc
    import grpc.aio

log = logging.getLogger("modelyard")
YOUNG_S = 10.0  # a worker that exits sooner than this after its start counts towards a crash loop
CRASH_LOOP = 5  # this many young exits in a row stop the whole gateway
_RESTART_DELAY_S = 0.5
WORKER_HEADER = b"x-modelyard-worker"


def parse_workers(value: str) -> int:
    """`--workers`: a positive number, or `auto` for the cores this process may run on."""
    if value.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a positive number or auto, got {value!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    return n


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, for uvicorn to listen on alongside the other
    workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


class WorkerHeader:
    """ASGI middleware adding `x-modelyard-worker: <index>/<pid>` to every HTTP answer: which worker answered."""

    def __init__(self, app: Any, index: int) -> None:
        self.app = app
        self.value = f"{index}/{os.getpid()}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (WORKER_HEADER, self.value)]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _worker_main(settings: Settings) -> None:
    from gateway.server import run

    raise SystemExit(run(settings))


def _shared_embedded_redis(settings: Settings) -> tuple[RedisServer, DataDirLock]:
    """The embedded Redis of a gateway without --redis-url, started once here for every worker, with its
    append-only file in --data-dir (locked against another gateway, as for one process)."""
    data_dir = Path(settings.data_dir).resolve()
    try:
        server, lock = start_persistent(data_dir)
    except (DataDirLocked, OSError) as exc:
        raise SystemExit(f"modelyard: {exc}") from None
    log.warning(
        "no --redis-url given: started an embedded Redis at %s (pid %s), shared by the %d workers; it keeps the "
        "registry in %s (delete that directory to start afresh)",
        server.url,
        server.pid,
        settings.workers,
        data_dir,
    )
    return server, lock


def _port_problem(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


class Supervisor:
    """Starts, restarts and stops the workers of one `modelyard serve --workers N`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}
        self._stopping = threading.Event()

    def run(self) -> int:
        s = self.settings
        for flag, port in (("--http-port", s.http_port), ("--grpc-port", s.grpc_port)):
            problem = _port_problem(s.host, port)
            if problem is not None:
                raise SystemExit(f"modelyard: cannot listen on {s.host}:{port} ({flag}): {problem}")
        embedded, lock = _shared_embedded_redis(s) if not s.redis_url else (None, None)
        redis_url = embedded.url if embedded is not None else s.redis_url
        base = dataclasses.replace(s, redis_url=redis_url, workers=1)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._supervise(base)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if embedded is not None:
                embedded.stop()
                log.info("embedded Redis stopped")
            if lock is not None:
                lock.release()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping.set()

    def _start(self, base: Settings, index: int) -> None:
        proc = self._ctx.Process(
            target=_worker_main, args=(dataclasses.replace(base, worker_index=index),), name=f"modelyard-worker-{index}"
        )
        proc.start()
        self._workers[index] = (proc, time.monotonic())
        log.info("worker %d started (pid %s)", index, proc.pid)

    def _supervise(self, base: Settings) -> int:
        for i in range(self.settings.workers):
            self._start(base, i)
        log.info(
            "modelyard: %d workers on http://%s:%d and gRPC %s:%d",
            self.settings.workers,
            base.host,
            base.http_port,
            base.host,
            base.grpc_port,
        )
        young_exits = 0
        while not self._stopping.wait(0.2):
            for index, (proc, started) in list(self._workers.items()):
                if proc.is_alive():
                    if time.monotonic() - started > YOUNG_S:
                        young_exits = 0
                    continue
                proc.join()
                young = time.monotonic() - started < YOUNG_S
                young_exits = young_exits + 1 if young else 0
                log.error("worker %d (pid %s) exited with %s", index, proc.pid, proc.exitcode)
                if young_exits >= CRASH_LOOP:
                    log.error("workers keep exiting right after their start: stopping the gateway")
                    return 1
                if self._stopping.wait(_RESTART_DELAY_S if young else 0):
                    break
                self._start(base, index)
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every worker, then wait for them to drain (a kill after the grace and a margin)."""
        for proc, _ in self._workers.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + 10.0
        for proc, _ in self._workers.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %s did not stop in time: killed", proc.pid)
                proc.kill()
                proc.join()
        self._workers.clear()


def supervise(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    return Supervisor(settings).run()


def reuseport_grpc_server(handlers: Sequence[grpc.GenericRpcHandler], settings: Settings) -> grpc.aio.Server:
    """A worker's gRPC server: `gateway.grpc_dataplane.build_server`'s options, with SO_REUSEPORT on so that the
    workers share the port (that module's server keeps it off, so a single gateway fails on a taken port)."""
    import grpc.aio

    from gateway.grpc_dataplane import GrpcPortError

    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers(tuple(handlers))
    host = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
    if server.add_insecure_port(f"{host}:{settings.grpc_port}") == 0:
        raise GrpcPortError(f"worker {settings.worker_index} cannot listen for gRPC on {host}:{settings.grpc_port}")
    return server
