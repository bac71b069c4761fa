"""Redis losing every key of the deployment under warm traffic through two real `modelyard serve` processes in
front of real Triton servers: the gateways rebuild the registry from their views and the copies from what the
Tritons hold, with no request failed, nothing loaded or unloaded, and accounting equal to Triton's own index."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import redis

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import TOKEN, StartGateway, check_answer, infer_body
from tests.waiting import eventually

MODELS = ["m010", "m011", "m012", "m013"]


def prefix_of(gw: GatewayProcess) -> str:
    return next(a.split("=", 1)[1] for a in gw.args if a.startswith("--redis-prefix="))


def placement(gw: GatewayProcess) -> dict[str, list[str]]:
    """Ready copies per backend, as the gateway's /admin/placement shows them."""
    r = httpx.get(f"{gw.url}/admin/placement", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    r.raise_for_status()
    backends = r.json()["backends"]
    return {b: sorted(m["name"] for m in v["models"] if m["state"] == "ready") for b, v in backends.items()}


def whole(gw: GatewayProcess, holding: dict[str, list[str]]) -> bool:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    models = httpx.get(f"{gw.url}/admin/models", headers=admin, timeout=10)
    route = httpx.get(f"{gw.url}/admin/routes/rr", headers=admin, timeout=10)
    if models.status_code != 200 or route.status_code != 200:
        return False
    names = sorted(m["name"] for m in models.json()["models"])
    return names == MODELS and placement(gw) == holding


def test_a_wiped_redis_is_rebuilt_under_warm_traffic_with_no_reloads(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw1, gw2 = start_gateway(), start_gateway()
    stack.register(capacity=2, models=MODELS)
    with stack.admin(gw1) as admin:
        admin.put("/admin/routes/rr", json={"splits": [{"model": "m010", "weight": 1}]}).raise_for_status()
        for m in MODELS[:3]:
            admin.post(f"/admin/models/{m}/load").raise_for_status()
    holding = {f"triton-{i}": sorted(stack.holding(t)) for i, t in enumerate(stack.tritons)}
    assert sum(len(v) for v in holding.values()) == 3
    eventually(lambda: placement(gw1) == placement(gw2) == holding, "the gateways see the warm copies", 30)
    loads_before = new_loads()

    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def traffic(gw: GatewayProcess) -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                name = ["m010", "m011", "m012", "rr"][i % 4]
                r = c.post(f"/v2/models/{name}/infer", json=infer_body([float(i)]))
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    check_answer(r.headers["x-modelyard-model"], [float(i)], r.json())
                i += 1

    threads = [threading.Thread(target=traffic, args=(gw,)) for gw in (gw1, gw2)]
    for t in threads:
        t.start()
    try:
        eventually(lambda: sum(statuses.values()) >= 50, "50 answers before the wipe", 30)
        client = redis.Redis.from_url(stack.redis.url)
        keys = list(client.scan_iter(f"{prefix_of(gw1)}:*"))
        client.delete(*keys)
        wiped = time.monotonic()
        eventually(lambda: whole(gw1, holding) and whole(gw2, holding), "Redis rebuilt", 30)
        rebuilt_after = time.monotonic() - wiped
        served = sum(statuses.values())
        eventually(lambda: sum(statuses.values()) >= served + 50, "50 warm answers after the rebuild", 30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"rebuilt in {rebuilt_after:.2f} s; answers {dict(statuses)}")
    assert set(statuses) == {200}, statuses
    assert new_loads() == loads_before  # Triton's own load log: nothing was loaded again
    assert {f"triton-{i}": sorted(stack.holding(t)) for i, t in enumerate(stack.tritons)} == holding
