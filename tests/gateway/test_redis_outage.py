"""A Redis outage, with a real redis-server of this test's own (paused with SIGSTOP, then killed), a real
`modelyard serve` and the session's real Tritons: what can be served is served, the rest answers a clean,
retriable 503, readiness stays true (degraded), and everything comes back by itself.

The session's shared Redis (`redis_server`, the stack's) is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import tritonclient.grpc as triton_grpc

from deploy.localstack.stack import GatewayProcess, LocalStack
from gateway.app import Gateway
from gateway.embedded_redis import RedisServer
from gateway.readiness import readiness
from gateway.settings import Settings
from tests.gateway.conftest import TOKEN, check_answer, infer_body
from tests.waiting import eventually

WARM, COLD, COLD2 = "m037", "m038", "m039"


def metric(c: httpx.Client, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not in /metrics")


def infer(c: httpx.Client, name: str) -> httpx.Response:
    return c.post(f"/v2/models/{name}/infer", json=infer_body([1.0]))


def check_degraded(c: httpx.Client, admin: httpx.Client, grpc_url: str, cold: str) -> None:
    """What clients see while Redis is unreachable."""
    ready = c.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "degraded" and body["redis"] == "unreachable" and body["since"] > 0, body
    assert metric(c, "modelyard_redis_up") == 0
    warm = infer(c, WARM)
    assert warm.status_code == 200, warm.text
    check_answer(WARM, [1.0], warm.json())
    # A cold request can't be placed without Redis: a clean 503 with Retry-After, long before the 60 s load
    # timeout (the client gives up after 10 s).
    refused = infer(c, cold)
    assert refused.status_code == 503, refused.text
    assert "Redis" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1
    write = admin.put("/admin/models/newcomer", json={"runtime": "triton"})
    assert write.status_code == 503 and "Redis" in write.json()["error"] and "unreachable" in write.json()["error"]
    read = admin.get(f"/admin/models/{WARM}")
    assert read.status_code == 200, read.text
    assert read.headers["x-modelyard-source"] == "view" and read.json()["source"] == "view"
    assert {"state": "ready"}.items() <= read.json()["copies"][0].items()
    assert admin.get("/admin/placement").json()["source"] == "view"
    grpc_client = triton_grpc.InferenceServerClient(grpc_url)
    try:
        assert grpc_client.is_server_ready(client_timeout=10)
    finally:
        grpc_client.close()


def test_a_redis_outage_degrades_the_gateway_without_failing_what_it_can_serve(
    stack: LocalStack, tmp_path: Path
) -> None:
    redis = RedisServer()
    redis.start()
    gw = GatewayProcess(
        redis.url, tmp_path, token=TOKEN, prefix=f"o{uuid.uuid4().hex[:6]}", extra=["--load-timeout", "60"]
    )
    gw.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with (
            httpx.Client(base_url=gw.url, headers=auth, timeout=60) as admin,
            httpx.Client(base_url=gw.url, timeout=10) as c,
        ):
            for i, t in enumerate(stack.tritons):
                capacity = {"models": 4}
                spec = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": capacity}
                assert admin.put(f"/admin/backends/t{i}", json=spec).status_code == 200
            for name in (WARM, COLD, COLD2):
                assert admin.put(f"/admin/models/{name}", json={"runtime": "triton"}).status_code == 200
            assert admin.post(f"/admin/models/{WARM}/load").status_code == 200
            assert c.get("/readyz").json()["status"] == "ready"
            assert metric(c, "modelyard_redis_up") == 1

            # 1. Redis paused: commands time out instead of failing.
            assert redis.pid is not None
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                eventually(lambda: c.get("/readyz").json()["status"] == "degraded")
                check_degraded(c, admin, gw.grpc_url, COLD)
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            eventually(lambda: c.get("/readyz").json()["status"] == "ready")
            assert metric(c, "modelyard_redis_up") == 1
            loaded = infer(c, COLD)  # cold loads work again
            assert loaded.status_code == 200 and loaded.headers["x-modelyard-cold"] == "1", loaded.text

            # 2. Redis killed: connections are refused.
            redis.stop()
            eventually(lambda: c.get("/readyz").json()["status"] == "degraded")
            check_degraded(c, admin, gw.grpc_url, COLD2)
            redis.start()  # same port, empty (what it then rebuilds is tests/faults' business)
            eventually(lambda: c.get("/readyz").json()["status"] == "ready")
            assert metric(c, "modelyard_redis_outages_total") == 2
        log = gw.log_tail(1_000_000)
        assert log.count("Redis is unreachable (") == 2, log  # one line per change, not one per request
        assert log.count("Redis is reachable again") == 2, log
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    finally:
        gw.stop()
        redis.stop()
        stack.unload_everything()


def test_readiness_is_can_serve_not_redis_is_up() -> None:
    """/readyz's states, in process (no I/O: the gateway is never started)."""
    gateway = Gateway(Settings(), aioredis.from_url("redis://127.0.0.1:1"))
    dp, health = gateway.dataplane, gateway.placer.health

    def answer() -> tuple[int, dict[str, object]]:
        r = readiness(dp, health)
        return r.status_code, json.loads(bytes(r.body))

    status, body = answer()
    assert status == 503 and "not synced" in str(body["error"]) and not dp.ready  # before the first sync
    health.mark_up()
    dp.ready = True
    assert answer() == (200, {"status": "ready", "redis": "up", "last_sync": health.last_sync})
    health.mark_down("ConnectionError: refused")
    status, body = answer()
    assert status == 200 and body["status"] == "degraded" and body["since"] == health.since and dp.ready
    gateway.drain()
    status, body = answer()
    assert status == 503 and "draining" in str(body["error"]) and not dp.ready  # gRPC ServerReady reads dp.ready
