"""Progressive rollouts and the shadow comparison report through two real `modelyard serve` processes in front of
real Triton servers. The state machine's edge cases are tested in process with a fake clock
(tests/placement/test_rollout.py); here: steps, rollbacks, restarts and stickiness end to end, kept short by
small `min_requests` and `step_seconds`."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import StartGateway, check_answer, infer_body
from tests.waiting import eventually

USERS = [f"u{i}" for i in range(16)]


def infer(gw: GatewayProcess, name: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{gw.url}/v2/models/{name}/infer", json=infer_body([1.0]), headers=headers, timeout=60)


def answered(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    model = r.headers["x-modelyard-model"]
    check_answer(model, [1.0], r.json())
    return model


def metric_sum(gws: list[GatewayProcess], line_start: str) -> float:
    total = 0.0
    for gw in gws:
        for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
            if line.startswith(line_start + " "):
                total += float(line.split()[-1])
    return total


def warm(admin: httpx.Client, *models: str) -> None:
    for m in models:
        assert admin.post(f"/admin/models/{m}/load").status_code == 200


def test_a_good_candidate_is_promoted_step_by_step_on_both_gateways_through_a_restart(
    stack: LocalStack, start_gateway: StartGateway
) -> None:
    gw1, gw2 = start_gateway(), start_gateway()
    stack.register(capacity=4, models=["m035", "m036", "m037", "m039"])
    admin = stack.admin(gw1)
    warm(admin, "m035", "m036", "m039")
    route = {
        "splits": [{"model": "m035", "weight": 100}],
        "shadows": [{"model": "m039", "percent": 100}],
        "sticky_header": "x-user",
    }
    assert admin.put("/admin/routes/r", json=route).status_code == 200
    assert admin.put("/admin/routes/r/rollout", json={"model": "nope"}).status_code == 422
    body = {
        "model": "m036",
        "steps": [50, 100],
        "step_seconds": 1,
        "min_requests": 10,
        "gates": {"max_p99_ratio": 1000},
    }
    r = admin.put("/admin/routes/r/rollout", json=body)
    assert r.status_code == 200, r.text
    assert (r.json()["phase"], r.json()["step"], r.json()["weight"]) == ("step", 0, 50)
    assert admin.put("/admin/routes/r/rollout", json=body).status_code == 409
    # A gateway restarted mid-rollout: the rollout lives in Redis and goes on where it was.
    gw1.stop()
    gw1.start()
    assert admin.get("/admin/routes/r/rollout").json()["weight"] == 50

    paths: dict[tuple[int, str], list[str]] = defaultdict(list)  # (gateway, user) -> models in order
    at_50: dict[int, set[str]] = defaultdict(set)
    sent = 0
    deadline = time.monotonic() + 90
    while (status := admin.get("/admin/routes/r/rollout").json())["phase"] == "step":
        assert time.monotonic() < deadline, status
        for g, gw in enumerate((gw1, gw2)):
            for user in USERS:
                model = answered(infer(gw, "r", {"x-user": user, "x-request-id": f"req-{sent}"}))
                sent += 1
                paths[(g, user)].append(model)
                if status["weight"] == 50:
                    at_50[g].add(model)
    assert status["phase"] == "promoted", status
    assert [(s["weight"], s["result"]) for s in status["steps"]] == [(50, "passed"), (100, "passed")]
    assert all(s["candidate"]["requests"] >= 10 and s["candidate"]["errors"] == 0 for s in status["steps"])
    assert status["steps"][0]["rest"]["requests"] > 0 and status["steps"][0]["candidate"]["p99_ms"] is not None
    assert admin.get("/admin/routes/r").json()["splits"] == [{"model": "m036", "weight": 100}]
    assert at_50[0] == at_50[1] == {"m035", "m036"}  # both gateways applied the 50% step
    for path in paths.values():  # sticky users moved once at most, from the old model to the candidate
        moved = path.index("m036") if "m036" in path else len(path)
        assert set(path[:moved]) <= {"m035"} and set(path[moved:]) <= {"m036"}, path
    for gw in (gw1, gw2):  # both apply the promotion
        eventually(
            lambda gw=gw: all(
                answered(infer(gw, "r", {"x-user": u, "x-request-id": "req-check"})) == "m036" for u in USERS[:4]
            )
        )
        eventually(lambda gw=gw: metric_sum([gw], 'modelyard_rollout_weight{model="m036",route="r"}') == 100)
    assert metric_sum([gw1, gw2], 'modelyard_rollouts_total{result="promoted",route="r"}') == 1
    assert admin.post("/admin/routes/r/rollout/promote").status_code == 409  # it is over
    listed = httpx.get(f"{gw2.url}/admin/rollouts", headers=admin.headers).json()["rollouts"]  # for /ui
    assert [(x["route"], x["model"], x["phase"], x["weight"]) for x in listed] == [("r", "m036", "promoted", 100)]

    # The shadow report, counted across both gateways: m039 answers differently from every primary.
    def report() -> dict[str, Any]:
        shadows: list[dict[str, Any]] = admin.get("/admin/routes/r/shadows").json()["shadows"]
        assert [s["model"] for s in shadows] == ["m039"]
        return shadows[0]

    def settled() -> bool:  # every shadow counted, and each one sent also compared (sent is counted before)
        r = report()
        return bool(r["sent"] + r["dropped"] >= sent and r["agree"] + r["disagree"] + r["failed"] == r["sent"])

    eventually(settled, "the shadow report to count every shadow and its comparison")
    shadow = report()
    assert shadow["disagree"] == shadow["sent"] > 0 and shadow["agree"] == shadow["failed"] == 0
    assert shadow["latency_ms"]["primary"]["p99"] is not None and shadow["latency_ms"]["shadow"]["p50"] is not None
    recent = shadow["recent_disagreements"]
    assert len(recent) == 20 and all(d["request_id"].startswith("req-") for d in recent)
    assert '"m039"' in recent[0]["shadow"] and '"m039"' not in recent[0]["primary"]


def test_a_candidate_failing_a_fifth_and_one_twice_as_slow_are_rolled_back_and_get_no_requests_after(
    stack: LocalStack, start_gateway: StartGateway
) -> None:
    gw1, gw2 = start_gateway(), start_gateway()
    stack.register(capacity=4, models=["m038", "flaky", "slow", "slower"])
    admin = stack.admin(gw1)
    warm(admin, "m038", "flaky", "slow", "slower")
    for name, rest in (("bad", "m038"), ("late", "slow")):
        r = admin.put(f"/admin/routes/{name}", json={"splits": [{"model": rest, "weight": 100}]})
        assert r.status_code == 200
    gates = {"max_error_rate_increase": 0.01, "max_p99_ratio": 1.5}
    for name, model, n in (("bad", "flaky", 20), ("late", "slower", 3)):
        body = {"model": model, "steps": [50, 100], "step_seconds": 3600, "min_requests": n, "gates": gates}
        assert admin.put(f"/admin/routes/{name}/rollout", json=body).status_code == 200
    for gw in (gw1, gw2):  # the rest's figures, on both gateways ("slow" answers in 1 s, "slower" in 2 s)
        for _ in range(10):
            answered(infer(gw, "bad", {"x-modelyard-target": "m038"}))
        for _ in range(2):
            answered(infer(gw, "late", {"x-modelyard-target": "slow"}))

    def phase(name: str) -> str:
        phase: str = admin.get(f"/admin/routes/{name}/rollout").json()["phase"]
        return phase

    # The candidates' requests, from both gateways, until the gates fire (at once: no step_seconds to wait).
    for name, candidate, statuses in (("bad", "flaky", (200, 500)), ("late", "slower", (200,))):
        deadline = time.monotonic() + 60
        for i in itertools.count():
            if phase(name) == "rolled_back":
                break
            assert time.monotonic() < deadline
            r = infer((gw1, gw2)[i % 2], name, {"x-modelyard-target": candidate})
            assert r.status_code in statuses or (r.status_code == 400 and phase(name) == "rolled_back"), r.text
    bad = admin.get("/admin/routes/bad/rollout").json()
    assert bad["gate"]["gate"] == "error_rate" and bad["gate"]["candidate"] > 0.01 and bad["gate"]["rest"] == 0.0
    assert bad["step"] == 0 and bad["steps"][0]["result"] == "failed"  # at its first step
    failed = bad["steps"][0]["candidate"]
    assert failed["requests"] >= 20 and 0 < failed["errors"] < failed["requests"]
    assert bad["steps"][0]["rest"]["errors"] == 0
    late = admin.get("/admin/routes/late/rollout").json()
    assert late["gate"]["gate"] == "p99" and late["gate"]["candidate_ms"] > 1.5 * late["gate"]["rest_ms"]
    assert 1.5 < late["gate"]["candidate_ms"] / late["gate"]["rest_ms"] < 3  # twice as slow, within the buckets
    assert admin.get("/admin/routes/late").json()["splits"] == [{"model": "slow", "weight": 100}]
    for gw in (gw1, gw2):  # the routes are as before on both gateways: no request reaches the candidates
        eventually(lambda gw=gw: all(answered(infer(gw, "bad", {})) == "m038" for _ in range(20)))
        assert answered(infer(gw, "late", {})) == "slow"
        for name, candidate in (("bad", "flaky"), ("late", "slower")):
            refused = infer(gw, name, {"x-modelyard-target": candidate})
            assert refused.status_code == 400  # no longer one of the route's models
    assert metric_sum([gw1, gw2], 'modelyard_rollouts_total{result="rolled_back",route="late"}') == 1
    # A new rollout may start once one ended; DELETE aborts it and restores the route.
    body = {"model": "slower", "steps": [50], "min_requests": 1000}
    assert admin.put("/admin/routes/late/rollout", json=body).status_code == 200
    r = admin.delete("/admin/routes/late/rollout")
    assert r.status_code == 200 and r.json()["phase"] == "aborted"
    assert admin.get("/admin/routes/late").json()["splits"] == [{"model": "slow", "weight": 100}]
