"""What `/readyz` (and, through `DataPlane.ready`, gRPC `ServerReady` and `/v2/health/ready`) answers.

Ready means "can serve": the view of placement was synced from Redis once. A gateway whose Redis became
unreachable stays ready, since warm models are served from its view: a readiness probe that failed with Redis
would take every gateway out of its Service at once. It is not ready before the first sync and while
draining (SIGTERM). No Redis call is made here.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from gateway.dataplane import DataPlane
from placement.redis_health import RedisHealth


def readiness(dataplane: DataPlane, health: RedisHealth) -> JSONResponse:
    if dataplane.draining:
        return JSONResponse(
            {"error": "the gateway is draining (SIGTERM): requests in flight finish, new ones go elsewhere"},
            status_code=503,
        )
    if not dataplane.synced:
        return JSONResponse(
            {"error": f"the gateway has not synced its view of placement from Redis yet ({health.reason})"},
            status_code=503,
            headers={"retry-after": "1"},
        )
    body: dict[str, Any] = {"status": "ready", "redis": "up", "last_sync": health.last_sync}
    if not health.up:
        body = {
            "status": "degraded",
            "redis": "unreachable",
            "since": health.since,
            "reason": health.reason,
            "last_sync": health.last_sync,
            "detail": "warm models are served from this gateway's view; cold loads, admin writes and names it "
            "has not seen answer 503 until Redis is back",
        }
    return JSONResponse(body)
