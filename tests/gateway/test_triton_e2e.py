"""The gateway in front of two real Triton servers, through `modelyard serve` processes sharing a real Redis."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from deploy.localstack.stack import LocalStack
from tests.gateway.conftest import MODELS, StartGateway, check_answer, infer_body
from tests.metrics_text import samples, total
from tests.waiting import eventually


def test_tritonclient_http_works_unchanged_through_the_gateway(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m001", "m002"])
    client = triton_http.InferenceServerClient(gw.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "modelyard"
    assert client.is_model_ready("m002")  # registered and placeable, though not loaded yet

    x = np.arange(5, dtype=np.float32)
    inp = triton_http.InferInput("INPUT0", [5], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)  # the binary tensor extension
    out = triton_http.InferRequestedOutput("OUTPUT0", binary_data=True)
    result = client.infer("m002", [inp], outputs=[out, triton_http.InferRequestedOutput("MODEL_NAME")])
    assert result.as_numpy("OUTPUT0").tolist() == (x + MODELS.index("m002")).tolist()
    assert result.as_numpy("MODEL_NAME").tolist() == [b"m002"]
    # A version in the path works too.
    result = client.infer("m002", [inp], model_version="1", outputs=[out])
    assert result.as_numpy("OUTPUT0").tolist() == (x + 2).tolist()

    meta = client.get_model_metadata("m002")
    assert meta["name"] == "m002" and [i["name"] for i in meta["inputs"]] == ["INPUT0"]
    assert client.get_model_config("m002")["name"] == "m002"
    assert client.is_model_ready("m002") and client.is_model_ready("m002", "1")
    with pytest.raises(Exception, match=r"\[404\] no model or route named 'unknown-model' is registered; register it"):
        client.infer("unknown-model", [inp])


def test_headers_say_which_model_and_backend_answered_and_when_it_was_cold(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m003"])
    first = httpx.post(f"{gw.url}/v2/models/m003/infer", json=infer_body([1.0]), timeout=60)
    assert first.status_code == 200, first.text
    check_answer("m003", [1.0], first.json())
    assert first.headers["x-modelyard-model"] == "m003"
    assert first.headers["x-modelyard-backend"] in ("triton-0", "triton-1")
    assert first.headers["x-modelyard-cold"] == "1"
    second = httpx.post(f"{gw.url}/v2/models/m003/infer", json=infer_body([2.0]), timeout=60)
    assert second.status_code == 200 and "x-modelyard-cold" not in second.headers
    assert second.headers["x-modelyard-backend"] == first.headers["x-modelyard-backend"]
    # A client that sends no Accept-Encoding (urllib sends none) gets the body as Triton would give it: plain.
    req = urllib.request.Request(
        f"{gw.url}/v2/models/m003/infer", data=json.dumps(infer_body([3.0])).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as plain:
        assert plain.headers.get("content-encoding") is None
        check_answer("m003", [3.0], json.loads(plain.read()))
    metrics = samples(httpx.get(f"{gw.url}/metrics").text)
    backend = first.headers["x-modelyard-backend"]
    assert total(metrics, "modelyard_placement_total", result="miss", backend=backend) == 1
    assert total(metrics, "modelyard_placement_total", result="hit", backend=backend) == 2
    assert total(metrics, "modelyard_loads_total", result="ok") == 1
    assert total(metrics, "modelyard_load_seconds_count", backend=backend) == 1


def test_overcommit_under_random_traffic_answers_right_and_never_exceeds_capacity(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway("--load-timeout", "60")  # a stuck load becomes a 503 with its reason, not a client timeout
    capacity = 3
    names = MODELS[:24]  # 4x the 6 slots
    stack.register(capacity=capacity, models=names)
    held_max = Counter[str]()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for i, t in enumerate(stack.tritons):
                held_max[f"triton-{i}"] = max(held_max[f"triton-{i}"], len(stack.holding(t)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    rng = random.Random(1234)
    plan = [(rng.choice(names), [float(rng.randint(0, 100))]) for _ in range(90)]
    errors: list[str] = []
    backends_seen = Counter[str]()

    def call(item: tuple[str, list[float]]) -> None:
        name, values = item
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{gw.url}/v2/models/{name}/infer", json=infer_body(values))
        if r.status_code != 200:
            errors.append(f"{name}: {r.status_code} {r.text}")
            return
        check_answer(name, values, r.json())
        assert r.headers["x-modelyard-model"] == name
        backends_seen[r.headers["x-modelyard-backend"]] += 1

    try:
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(call, plan))
    finally:
        stop.set()
        sampler.join()
    assert errors == []
    assert set(backends_seen) == {"triton-0", "triton-1"}
    assert max(held_max.values()) <= capacity, held_max
    assert max(held_max.values()) == capacity  # the run did fill the backends
    # Every real load Triton did is one the gateway counted, and there were evictions.
    with stack.admin(gw) as admin:
        counted = sum(admin.get(f"/admin/models/{n}").json()["loads"] for n in names)
    assert counted == len(new_loads()) > 2 * capacity


def _cold_burst(stack: LocalStack, urls: list[str], name: str, n: int = 50) -> list[httpx.Response]:
    barrier = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        with httpx.Client(timeout=120) as c:
            barrier.wait()
            return c.post(f"{urls[i % len(urls)]}/v2/models/{name}/infer", json=infer_body([float(i)]))

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_fifty_concurrent_requests_for_a_cold_model_cause_one_load(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m010"])
    answers = _cold_burst(stack, [gw.url], "m010")
    assert [r.status_code for r in answers] == [200] * 50
    for i, r in enumerate(answers):
        check_answer("m010", [float(i)], r.json())
    assert new_loads().count("m010") == 1
    with stack.admin(gw) as admin:
        assert admin.get("/admin/models/m010").json()["loads"] == 1


def test_three_gateway_processes_on_one_redis_load_a_cold_model_once(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gateways = [start_gateway() for _ in range(3)]
    stack.register(capacity=4, models=["m011"])
    answers = _cold_burst(stack, [g.url for g in gateways], "m011")
    assert [r.status_code for r in answers] == [200] * 50
    assert new_loads().count("m011") == 1
    assert len({r.headers["x-modelyard-backend"] for r in answers}) == 1


def test_a_gateway_restarted_on_the_same_redis_serves_warm_models_without_reloading(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m012"])
    assert httpx.post(f"{gw.url}/v2/models/m012/infer", json=infer_body([1.0]), timeout=60).status_code == 200
    assert gw.stop() == 0  # SIGTERM: a clean exit
    stack.gateways.remove(gw)
    again = start_gateway()
    r = httpx.post(f"{again.url}/v2/models/m012/infer", json=infer_body([1.0]), timeout=60)
    assert r.status_code == 200 and "x-modelyard-cold" not in r.headers
    assert new_loads().count("m012") == 1


def test_a_model_the_backend_lost_is_reloaded_transparently(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m013"])
    r = httpx.post(f"{gw.url}/v2/models/m013/infer", json=infer_body([1.0]), timeout=60)
    triton = stack.tritons[int(r.headers["x-modelyard-backend"].split("-")[1])]
    # Behind the gateway's back (as after a backend restart), the model goes away.
    httpx.post(f"{triton.url}/v2/repository/models/m013/unload", json={}, timeout=10)
    eventually(lambda: "m013" not in stack.holding(triton), "Triton to drop m013")
    r = httpx.post(f"{gw.url}/v2/models/m013/infer", json=infer_body([5.0]), timeout=60)
    assert r.status_code == 200, r.text
    check_answer("m013", [5.0], r.json())
    assert r.headers["x-modelyard-cold"] == "1"
    assert new_loads().count("m013") == 2


def test_no_evictable_model_gives_503_with_retry_after(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    # The pinned models are loaded through a gateway with a long load timeout (a busy machine can take over 2 s
    # to load one); the call that finds nothing evictable goes through one that gives up after 2 s.
    warmer = start_gateway("--load-timeout", "120")
    gw = start_gateway("--load-timeout", "2")
    stack.register(
        capacity=1, models=["m014", "m015", "m016"], extra={"m014": {"pinned": True}, "m015": {"pinned": True}}
    )
    for name in ("m014", "m015"):
        with stack.admin(warmer) as admin:
            assert admin.post(f"/admin/models/{name}/load").status_code == 200
    r = httpx.post(f"{gw.url}/v2/models/m016/infer", json=infer_body([1.0]), timeout=60)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert "pinned" in r.json()["error"]
    assert "m016" not in new_loads()


def test_a_failing_model_reports_the_backends_reason_and_is_not_reloaded_in_a_loop(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["broken"])
    r = httpx.post(f"{gw.url}/v2/models/broken/infer", json=infer_body([1.0]), timeout=60)
    assert r.status_code == 503 and "retry-after" in r.headers
    assert "failed to load" in r.json()["error"] and "broken" in r.json()["error"]
    with stack.admin(gw) as admin:
        record = admin.get("/admin/models/broken").json()
    assert [c["state"] for c in record["copies"]] == ["failed"]
    assert record["copies"][0]["reason"] and record["last_error"]
    attempts = new_loads().count("broken")
    # Inside the backoff (1 s, doubling per failure) a request is refused without a load; one that comes after it
    # (a slow machine) is a real new attempt and says so. Loads must equal the real attempts, never one per request.
    held_back = retried = 0
    for _ in range(10):
        again = httpx.post(f"{gw.url}/v2/models/broken/infer", json=infer_body([1.0]), timeout=60)
        assert again.status_code == 503, again.text
        if "next attempt" in again.json()["error"]:
            held_back += 1
        else:
            assert "failed to load" in again.json()["error"], again.text
            retried += 1
    assert new_loads().count("broken") == attempts + retried
    assert held_back >= 5, f"only {held_back} of 10 requests were held back by the backoff"


def test_refresh_swaps_a_changed_model_under_traffic_without_a_failed_request(
    stack: LocalStack, start_gateway: StartGateway
) -> None:
    from deploy.localstack.models import write_model

    gw = start_gateway()
    stack.register(capacity=4, models=["m030"])
    assert httpx.post(f"{gw.url}/v2/models/m030/infer", json=infer_body([1.0]), timeout=60).json()
    write_model(stack.repo, "m030", 1000.0, load_log=stack.load_log)  # a new version of the model's code
    try:
        seen: list[float] = []
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    r = c.post(f"{gw.url}/v2/models/m030/infer", json=infer_body([1.0]))
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen.append(r.json()["outputs"][0]["data"][0])

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        eventually(lambda: len(seen) >= 6, "traffic to m030 before the refresh")
        with stack.admin(gw) as admin:
            r = admin.post("/admin/models/m030/refresh")
        assert r.status_code == 200 and len(r.json()["refreshed_on"]) == 1, r.text
        eventually(lambda: seen.count(1.0 + 1000) >= 6, "answers of the refreshed m030")
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert seen[0] == 1.0 + 30 and seen[-1] == 1.0 + 1000  # old answers, then new ones
        assert set(seen) == {31.0, 1001.0}
    finally:
        write_model(stack.repo, "m030", 30.0, load_log=stack.load_log)


def test_deleting_a_backend_drains_it_and_its_models_move_on_demand(
    stack: LocalStack, start_gateway: StartGateway
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m031", "m032"])
    with stack.admin(gw) as admin:
        for name in ("m031", "m032"):
            assert admin.post(f"/admin/models/{name}/load").status_code == 200
        placement = admin.get("/admin/placement").json()["backends"]
        busy = next(b for b, rec in placement.items() if rec["models"])
        held = sorted(m["name"] for m in placement[busy]["models"])
        r = admin.delete(f"/admin/backends/{busy}")
        assert r.status_code == 200 and r.json()["unloaded"] == held and r.json()["abandoned"] == []
        assert admin.get(f"/admin/backends/{busy}").status_code == 404
        assert stack.holding(stack.tritons[int(busy.split("-")[1])]) == []
        for name in held:
            assert all(c["backend"] != busy for c in admin.get(f"/admin/models/{name}").json()["copies"])
    other = "triton-1" if busy == "triton-0" else "triton-0"
    for name in held:
        r = httpx.post(f"{gw.url}/v2/models/{name}/infer", json=infer_body([2.0]), timeout=60)
        assert r.status_code == 200 and r.headers["x-modelyard-backend"] == other
        check_answer(name, [2.0], r.json())
