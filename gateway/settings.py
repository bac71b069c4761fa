"""The gateway's settings: built once from flags and environment in `gateway.cli`, then passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.sources import SourceSettings
from placement.settings import PlacementSettings


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    redis_url: str | None = None
    admin_token: str = ""
    max_body_bytes: int = 64 * 1024 * 1024  # bodies are buffered so a retry can resend them
    backend_timeout: float = 60.0  # one forwarded request
    shutdown_grace: float = 30.0  # how long in-flight requests get to finish on SIGTERM
    log_level: str = "info"
    # Routes, shadows, hedging and retries (gateway.dataplane).
    shadow_queue: int = 256  # shadow requests waiting for a worker; past this they are dropped and counted
    shadow_concurrency: int = 16  # shadow requests in flight at once, per gateway
    hedge_window: float = 10.0  # seconds over which hedges are held to a policy's max_extra_percent
    latency_window: int = 200  # latencies kept per hedged model, for the p95 of `after_ms: null`
    latency_min_samples: int = 20  # no p95 (so no hedge with `after_ms: null`) before this many
    retry_budget_percent: float = 20.0  # retries in flight: at most this share of the requests in flight...
    retry_budget_min: int = 5  # ... or this many, whichever is larger
    forward_headers: str = ""  # regex of request headers passed on to backends over HTTP (gateway.forward_headers)
    sequence_idle_timeout: float = 600.0  # a sequence idle this long is forgotten (placement.affinity)
    log_format: str = "auto"  # json | text | auto (json unless stderr is a terminal); see gateway.logs
    # Which model and route names get a label of their own in /metrics (gateway.metrics.LabelPolicy.parse).
    metrics_models: str = "top:50"
    # The embedded Redis's append-only file and the lock that keeps a second gateway out (no --redis-url only).
    data_dir: str = ".modelyard"
    config: str | None = None  # a fleet file applied once the gateway is ready (gateway.ctl.fleet)
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    sources: SourceSettings = field(default_factory=SourceSettings)  # model sources and their disk cache
    # --workers (gateway.workers): processes on the same ports; worker_index is set in each of them, None in a
    # single-process gateway.
    workers: int = 1
    # --grpc-server: "threads" (gateway.grpc_threads) or "aio" (grpc.aio, gateway.grpc_dataplane.build_server).
    grpc_server: str = "aio"
    worker_index: int | None = None
