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
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    sources: SourceSettings = field(default_factory=SourceSettings)  # model sources and their disk cache
