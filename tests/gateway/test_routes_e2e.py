"""Routes, shadows, hedging and retries through real `modelyard serve` processes in front of real Triton servers.

Shares, hashing and budgets are tested in process with seeded randomness and fake clocks
(tests/gateway/test_routing.py, test_hedging.py, tests/placement/test_dataplane_traffic.py); here the same
behaviour is checked end to end, on counts and on which model and backend answered.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import tritonclient.grpc as triton_grpc

from deploy.localstack.stack import GatewayProcess, LocalStack
from deploy.localstack.triton import TritonServer, free_port
from tests.gateway.conftest import StartGateway, check_answer, infer_body
from tests.waiting import eventually


def put_route(stack: LocalStack, gw: GatewayProcess, name: str, body: dict[str, Any]) -> httpx.Response:
    with stack.admin(gw) as admin:
        return admin.put(f"/admin/routes/{name}", json=body)


def infer(client: httpx.Client, name: str, value: float, headers: dict[str, str] | None = None) -> httpx.Response:
    r = client.post(f"/v2/models/{name}/infer", json=infer_body([value]), headers=headers or {})
    assert r.status_code == 200, r.text
    check_answer(r.headers["x-modelyard-model"], [value], r.json())  # the header names the model that answered
    return r


def metric(gw: GatewayProcess, line_start: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def client() -> Iterator[Callable[[GatewayProcess], httpx.Client]]:
    made: list[httpx.Client] = []

    def make(gw: GatewayProcess) -> httpx.Client:
        made.append(httpx.Client(base_url=gw.url, timeout=60))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_a_route_splits_by_weight_sticks_users_and_obeys_the_target_header(
    stack: LocalStack, start_gateway: StartGateway, client: Callable[[GatewayProcess], httpx.Client]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m033", "m034"])
    split = {"splits": [{"model": "m033", "weight": 90}, {"model": "m034", "weight": 10}], "sticky_header": "x-user"}
    r = put_route(stack, gw, "ranker", split)
    assert r.status_code == 200, r.text
    c = client(gw)
    models = Counter(infer(c, "ranker", float(i)).headers["x-modelyard-model"] for i in range(500))
    assert abs(models["m034"] / 500 - 0.10) < 0.05, models  # 3.7 standard deviations
    # The same user always gets the same model.
    for user in range(30):
        seen = {infer(c, "ranker", 1.0, {"x-user": f"u{user}"}).headers["x-modelyard-model"] for _ in range(3)}
        assert len(seen) == 1
    assert infer(c, "ranker", 2.0, {"x-modelyard-target": "m034"}).headers["x-modelyard-model"] == "m034"
    wrong = c.post("/v2/models/ranker/infer", json=infer_body([1.0]), headers={"x-modelyard-target": "m035"})
    assert wrong.status_code == 400 and "it can target ['m033', 'm034']" in wrong.json()["error"]
    # gRPC: the model's name in the request message is rewritten for the model that answers.
    grpc_client = triton_grpc.InferenceServerClient(gw.grpc_url)
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([5.0], dtype=np.float32))
    result = grpc_client.infer("ranker", [x], headers={"x-modelyard-target": "m034"}, client_timeout=60)
    assert result.as_numpy("MODEL_NAME").tolist() == [b"m034"]
    assert result.get_response().model_name == "m034"
    grpc_client.close()
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'modelyard_route_requests_total{model="m034",route="ranker"}' in metrics


def test_route_admin_refuses_what_the_contract_says(stack: LocalStack, start_gateway: StartGateway) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m033"])
    one = {"splits": [{"model": "m033", "weight": 1}]}
    with stack.admin(gw) as admin:
        assert admin.put("/admin/routes/m033", json=one).status_code == 409  # a model's name
        assert admin.put("/admin/routes/r1", json={"splits": [{"model": "nope", "weight": 1}]}).status_code == 422
        assert admin.put("/admin/routes/r1", json={"splits": [{"model": "m033", "weight": -1}]}).status_code == 400
        assert admin.put("/admin/routes/bad name", json=one).status_code in (400, 404)
        assert admin.put("/admin/routes/r1", json=one).status_code == 200
        assert admin.put("/admin/models/r1", json={"runtime": "triton"}).status_code == 409  # a route's name
        assert admin.delete("/admin/models/m033").status_code == 409  # r1 names it
        assert admin.get("/admin/routes").json()["routes"][0]["name"] == "r1"
        assert admin.get("/admin/routes/r1").json()["splits"] == [{"model": "m033", "weight": 1}]
        assert admin.delete("/admin/routes/r1").status_code == 200
        assert admin.get("/admin/routes/r1").status_code == 404
        assert httpx.put(f"{gw.url}/admin/routes/r1", json=one).status_code == 401


def test_a_route_changed_through_one_gateway_reaches_another(
    stack: LocalStack, start_gateway: StartGateway, client: Callable[[GatewayProcess], httpx.Client]
) -> None:
    first, second = start_gateway(), start_gateway()
    stack.register(capacity=4, models=["m033", "m034"])
    c = client(second)
    # Created through one gateway, callable through the other as soon as the admin call returned: a name the
    # second has not heard of yet is looked up in Redis before a 404 (no waiting for the pub/sub event).
    assert put_route(stack, first, "live", {"splits": [{"model": "m033", "weight": 1}]}).status_code == 200
    assert infer(c, "live", 1.0).headers["x-modelyard-model"] == "m033"
    # The same when the event never comes (written to Redis without one, as a lost pub/sub message would be):
    # without the lookup this is a 404 every time.
    prefix = next(a.split("=", 1)[1] for a in second.args if a.startswith("--redis-prefix="))
    spec = {"name": "quiet", "splits": [{"model": "m034", "weight": 1}], "shadows": []}
    with redis.Redis.from_url(stack.redis.url) as r:
        r.hset(f"{prefix}:routes", "quiet", json.dumps(spec))
    assert infer(c, "quiet", 2.0).headers["x-modelyard-model"] == "m034"
    assert metric(second, 'modelyard_name_lookups_total{result="found"}') >= 1
    # Changes to a route it knows reach it by event.

    def answers(model: str) -> Callable[[], bool]:
        return lambda: infer(c, "live", 1.0).headers["x-modelyard-model"] == model

    for target in ("m034", "m033"):
        assert put_route(stack, first, "live", {"splits": [{"model": target, "weight": 1}]}).status_code == 200
        eventually(answers(target))


def test_shadows_leave_the_primary_answer_alone_and_are_compared_or_dropped(
    stack: LocalStack,
    start_gateway: StartGateway,
    new_loads: Callable[[], list[str]],
    client: Callable[[GatewayProcess], httpx.Client],
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m035", "m036", "slow"])
    with stack.admin(gw) as admin:
        assert admin.post("/admin/models/slow/load").status_code == 200  # shadows only go to warm models
    c = client(gw)
    plain = [infer(c, "m035", float(i)).content for i in range(5)]
    # A shadow that answers after 1 s, and a shadow to a cold model.
    put_route(stack, gw, "shadowed", {"splits": [{"model": "m035", "weight": 1}], "shadows": [{"model": "slow"}]})
    put_route(stack, gw, "cold", {"splits": [{"model": "m035", "weight": 1}], "shadows": [{"model": "m036"}]})
    for i in range(5):
        r = infer(c, "shadowed", float(i))
        assert r.content == plain[i] and r.headers["x-modelyard-model"] == "m035"
        assert infer(c, "cold", float(i)).content == plain[i]
    # The slow shadow answers later; it is another model, so it disagrees.
    eventually(lambda: metric(gw, 'modelyard_shadows_total{result="disagree",route="shadowed"}') == 5)
    assert metric(gw, 'modelyard_shadows_total{result="sent",route="shadowed"}') == 5
    assert metric(gw, 'modelyard_shadows_dropped_total{reason="cold",route="cold"}') == 5
    assert "m036" not in new_loads()
    # The same model as its own shadow agrees.
    put_route(stack, gw, "same", {"splits": [{"model": "m035", "weight": 1}], "shadows": [{"model": "m035"}]})
    infer(c, "same", 3.0)
    eventually(lambda: metric(gw, 'modelyard_shadows_total{result="agree",route="same"}') == 1)


def test_a_stalled_copy_is_hedged_on_the_other_backend(
    stack: LocalStack, start_gateway: StartGateway, client: Callable[[GatewayProcess], httpx.Client]
) -> None:
    gw = start_gateway()
    hedge = {"after_ms": 150, "max_extra_percent": 50}
    stack.register(
        capacity=4,
        models=["stall", "m037"],
        extra={name: {"min_copies": 2, "max_copies": 2, "hedge": hedge} for name in ("stall", "m037")},
    )
    with stack.admin(gw) as admin:
        for name in ("stall", "m037"):
            copies = admin.post(f"/admin/models/{name}/load").json()["copies"]
            assert sorted(c["backend"] for c in copies if c["state"] == "ready") == ["triton-0", "triton-1"]
    c = client(gw)
    # A fast model under the same policy is never hedged.
    assert not any("x-modelyard-hedged" in infer(c, "m037", float(i)).headers for i in range(30))
    assert metric(gw, 'modelyard_hedges_total{result="sent"}') == 0
    # A fifth of the stall model's calls take 1.5 s: those are hedged, and the hedge answers.
    answers = [infer(c, "stall", float(i)) for i in range(40)]
    hedged = [r for r in answers if r.headers.get("x-modelyard-hedged") == "1"]
    assert hedged, "no request was answered by a hedge"
    assert metric(gw, 'modelyard_hedges_total{result="won"}') == len(hedged)
    assert len(hedged) <= metric(gw, 'modelyard_hedges_total{result="sent"}') <= 0.5 * 40


def test_killing_one_of_two_backends_during_traffic_loses_no_request(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Any
) -> None:
    """A model with copies on two backends; one backend (a Triton of this test's own) is killed under load."""
    doomed = TritonServer(
        stack.repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=tmp_path / "t.log"
    )
    doomed.start()
    try:
        gw = start_gateway()
        with stack.admin(gw) as admin:
            for bid, t in (("triton-0", stack.tritons[0]), ("doomed", doomed)):
                spec = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": 4}}
                assert admin.put(f"/admin/backends/{bid}", json=spec).status_code == 200
            model = {"runtime": "triton", "min_copies": 2, "max_copies": 2}
            assert admin.put("/admin/models/m038", json=model).status_code == 200
            copies = admin.post("/admin/models/m038/load").json()["copies"]
            assert sorted(c["backend"] for c in copies) == ["doomed", "triton-0"]
        done = Counter[str]()
        failures: list[str] = []
        stop = threading.Event()

        def traffic(worker: int) -> None:
            with httpx.Client(base_url=gw.url, timeout=60) as c:
                i = 0
                while not stop.is_set():
                    r = c.post("/v2/models/m038/infer", json=infer_body([float(i)]))
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                    else:
                        check_answer("m038", [float(i)], r.json())
                        done[r.headers["x-modelyard-backend"]] += 1
                    i += 1

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(traffic, w) for w in range(4)]
            eventually(lambda: done["doomed"] >= 20 and done["triton-0"] >= 20)
            doomed.kill()
            before = sum(done.values())
            eventually(lambda: sum(done.values()) >= before + 200)
            stop.set()
            for f in futures:
                f.result()
        assert failures == []
        assert metric(gw, 'modelyard_retries_total{reason="unavailable"}') >= 1
    finally:
        doomed.stop()
