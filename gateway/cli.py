"""The `modelyard` command. Every flag of `serve` can also come from its MODELYARD_* environment variable."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from collections.abc import Sequence

from adapters.sources import SourceSettings, default_cache_dir
from gateway.metrics import LabelPolicy
from gateway.settings import Settings
from gateway.workers import parse_workers
from placement.eviction import EVICTIONS
from placement.settings import PlacementSettings


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


# The admin API's client (gateway.ctl): its own parsers, so that `serve`'s stays as it is.
CLIENT_COMMANDS = ("apply", "diff", "get", "rollout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="A gateway that overcommits models on Triton. Also the admin API's client: "
        "modelyard apply|diff|get|rollout --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run one gateway", formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def add(flag: str, env: str, default: str | None, kind: type = str, help: str = "") -> None:
        s.add_argument(flag, default=_env(env, default), type=kind, help=f"{help} [{env}]")

    add("--host", "MODELYARD_HOST", "127.0.0.1", help="address to listen on")
    add("--http-port", "MODELYARD_HTTP_PORT", "8080", int, "data plane, admin API and /metrics")
    add("--grpc-port", "MODELYARD_GRPC_PORT", "8081", int, "gRPC data plane")
    add("--redis-url", "MODELYARD_REDIS_URL", None, help="shared state; absent: an embedded Redis is started")
    add("--admin-token", "MODELYARD_ADMIN_TOKEN", None, help="bearer token for /admin; absent: one is generated")
    add(
        "--data-dir",
        "MODELYARD_DATA_DIR",
        ".modelyard",
        help="where the embedded Redis keeps its append-only file (no --redis-url only); delete it to start afresh",
    )
    add("--config", "MODELYARD_CONFIG", None, help="a fleet file (YAML or JSON) applied once the gateway is ready")
    add("--redis-prefix", "MODELYARD_REDIS_PREFIX", "modelyard", help="prefix of every Redis key")
    add("--load-timeout", "MODELYARD_LOAD_TIMEOUT", "120", float, "seconds a request waits for a cold load")
    add("--backend-timeout", "MODELYARD_BACKEND_TIMEOUT", "60", float, "seconds for one forwarded request")
    add("--max-body-bytes", "MODELYARD_MAX_BODY_BYTES", str(64 * 1024 * 1024), int, "largest request body")
    add("--lease-ttl", "MODELYARD_LEASE_TTL", "15", float, "seconds a load lease lives without renewal")
    add(
        "--usage-flush-interval",
        "MODELYARD_USAGE_FLUSH_INTERVAL",
        "0.5",
        float,
        "seconds between batched last-used writes",
    )
    add(
        "--copy-scale-up-rate",
        "MODELYARD_COPY_SCALE_UP_RATE",
        "100",
        float,
        "requests/s per copy above which a model with max_copies > 1 gets another copy (0: never)",
    )
    add("--shutdown-grace", "MODELYARD_SHUTDOWN_GRACE", "30", float, "seconds in-flight requests get on SIGTERM")
    add("--log-level", "MODELYARD_LOG_LEVEL", "info", help="debug, info, warning, error")
    # Model sources (file:///dir, s3://bucket/prefix): see docs/operations.md, "Model sources".
    add("--model-cache-dir", "MODELYARD_MODEL_CACHE_DIR", default_cache_dir(), help="disk cache of model files")
    add(
        "--model-cache-bytes",
        "MODELYARD_MODEL_CACHE_BYTES",
        str(10 * 1024**3),
        int,
        "bound of the model file cache (least recently used out first)",
    )
    add(
        "--s3-endpoint-url",
        "MODELYARD_S3_ENDPOINT_URL",
        None,
        help="S3-compatible store (MinIO, ...); absent: boto3's own (AWS_ENDPOINT_URL, or AWS)",
    )
    add(
        "--triton-upload-max-bytes",
        "MODELYARD_TRITON_UPLOAD_MAX_BYTES",
        str(256 * 1024**2),
        int,
        "largest model (sum of its files) sent to Triton with a load call",
    )
    add(
        "--source-poll-interval",
        "MODELYARD_SOURCE_POLL_INTERVAL",
        "0",
        float,
        "seconds between looks for changed model sources (refreshed when changed); 0: off",
    )
    add(
        "--log-format",
        "MODELYARD_LOG_FORMAT",
        "auto",
        help="json (one object per line), text, or auto: json unless stderr is a terminal",
    )
    add(
        "--metrics-models",
        "MODELYARD_METRICS_MODELS",
        "top:50",
        help="model and route names with a label of their own in /metrics: top:N (busiest N), a comma-separated "
        "list of names, or both (top:20,fraud-v3); the rest are counted as model=_other",
    )
    add(
        "--workers",
        "MODELYARD_WORKERS",
        "1",
        help="gateway processes on the same ports, sharing one Redis and behaving as one gateway; auto: one per core",
    )
    add(
        "--grpc-server",
        "MODELYARD_GRPC_SERVER",
        "aio",
        help="the gRPC data plane's server: threads (grpcio's synchronous server on a thread pool; warm ModelInfer "
        "and Predict answered without the event loop) or aio (grpc.aio on the event loop)",
    )
    add(
        "--eviction",
        "MODELYARD_EVICTION",
        "nextuse",
        help="eviction policy: nextuse (evict the copy predicted to be asked for last, weighed by size and load "
        "time; measured best in docs/benchmarks.md), gdsf (cost- and size-aware Greedy-Dual with frequency) or "
        "lru (plain least recently used)",
    )
    add(
        "--forward-headers",
        "MODELYARD_FORWARD_HEADERS",
        "",
        help="regex of request headers passed on to the backend over HTTP (like Triton's "
        "--http-header-forward-pattern); credentials and hop-by-hop headers only when named in it",
    )
    add(
        "--prewarm",
        "MODELYARD_PREWARM",
        "on",
        help="on: load a model shortly before its expected next request, learned from its arrivals, into free "
        "room or in place of a copy worth less (one gateway does it for all; docs/benchmarks.md); off: load on "
        "demand only",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    token = args.admin_token
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"modelyard: generated admin token (shown once): {token}", file=sys.stderr, flush=True)
    for name in ("http_port", "grpc_port"):
        port = getattr(args, name)
        if not 0 < port < 65536:
            raise SystemExit(f"modelyard: --{name.replace('_', '-')} must be a port number, got {port}")
    if args.load_timeout <= 0 or args.backend_timeout <= 0 or args.max_body_bytes <= 0:
        raise SystemExit("modelyard: --load-timeout, --backend-timeout and --max-body-bytes must be positive")
    if args.model_cache_bytes <= 0 or args.triton_upload_max_bytes <= 0 or args.source_poll_interval < 0:
        raise SystemExit(
            "modelyard: --model-cache-bytes and --triton-upload-max-bytes must be positive, "
            "--source-poll-interval at least 0"
        )
    if args.log_format not in ("json", "text", "auto"):
        raise SystemExit(f"modelyard: --log-format must be json, text or auto, got {args.log_format!r}")
    if args.eviction not in EVICTIONS:
        raise SystemExit(f"modelyard: --eviction must be one of {', '.join(EVICTIONS)}, got {args.eviction!r}")
    if args.grpc_server not in ("threads", "aio"):
        raise SystemExit(f"modelyard: --grpc-server must be threads or aio, got {args.grpc_server!r}")
    if args.prewarm not in ("on", "off"):
        raise SystemExit(f"modelyard: --prewarm must be on or off, got {args.prewarm!r}")
    try:
        workers = parse_workers(args.workers)
    except ValueError as exc:
        raise SystemExit(f"modelyard: {exc}") from None
    try:
        LabelPolicy.parse(args.metrics_models)
    except ValueError as exc:
        raise SystemExit(f"modelyard: --metrics-models: {exc}") from None
    try:
        re.compile(args.forward_headers)
    except re.error as exc:
        raise SystemExit(f"modelyard: --forward-headers is not a valid regex: {exc}") from None
    return Settings(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        redis_url=args.redis_url,
        admin_token=token,
        max_body_bytes=args.max_body_bytes,
        backend_timeout=args.backend_timeout,
        shutdown_grace=args.shutdown_grace,
        log_level=args.log_level.lower(),
        log_format=args.log_format,
        metrics_models=args.metrics_models,
        data_dir=args.data_dir,
        config=args.config or None,
        workers=workers,
        grpc_server=args.grpc_server,
        forward_headers=args.forward_headers,
        placement=PlacementSettings(
            redis_prefix=args.redis_prefix,
            load_timeout=args.load_timeout,
            lease_ttl=args.lease_ttl,
            usage_flush_interval=args.usage_flush_interval,
            scale_up_rate=args.copy_scale_up_rate,
            eviction_policy=args.eviction,
            prewarm=args.prewarm == "on",
        ),
        sources=SourceSettings(
            cache_dir=args.model_cache_dir,
            cache_bytes=args.model_cache_bytes,
            s3_endpoint_url=args.s3_endpoint_url or None,
            triton_upload_max_bytes=args.triton_upload_max_bytes,
            poll_interval=args.source_poll_interval,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        from gateway.ctl.main import main as ctl_main

        return ctl_main(argv)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from gateway.server import run

        settings = settings_from_args(args)
        if settings.config:
            from gateway.ctl.fleet import check_file

            check_file(settings.config)  # a bad fleet file stops the start, before anything runs
        return run(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
