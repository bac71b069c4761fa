"""Metrics and log lines of a real `modelyard serve` in front of two real Tritons, after a scripted sequence:
a cold request, warm requests, an eviction, a failed load and an unknown model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import StartGateway, check_answer, infer_body
from tests.metrics_text import label_values, samples, total


def log_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The gateway's JSON log lines (its stderr is a file, so the default format is json)."""
    out = []
    for line in gw.log_path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def infer(gw: GatewayProcess, model: str, value: float, **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v2/models/{model}/infer", json=infer_body([value]), headers=headers, timeout=120)


def test_counters_histograms_and_log_lines_follow_a_scripted_sequence(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=1, models=["m010", "m011", "m012", "broken"])  # two Tritons, one slot each

    cold = infer(gw, "m010", 1.0, **{"x-request-id": "req-cold-1"})
    assert cold.status_code == 200 and cold.headers["x-modelyard-cold"] == "1", cold.text
    home = cold.headers["x-modelyard-backend"]
    lines_before_warm = len(log_lines(gw))
    for i in range(3):
        warm = infer(gw, "m010", float(i))
        assert warm.status_code == 200 and "x-modelyard-cold" not in warm.headers
        check_answer("m010", [float(i)], warm.json())
    assert len(log_lines(gw)) == lines_before_warm, "the warm path wrote log lines"

    assert infer(gw, "m011", 1.0).status_code == 200  # the other Triton's slot
    third = infer(gw, "m012", 1.0)  # no free slot: the least recently used copy goes
    assert third.status_code == 200, third.text
    broken = infer(gw, "broken", 1.0, **{"x-request-id": "req-broken"})
    assert broken.status_code == 503 and "failed to load" in broken.json()["error"]
    assert infer(gw, "no-such-model", 1.0).status_code == 404
    assert new_loads()[:3] == ["m010", "m011", "m012"]

    m = samples(httpx.get(f"{gw.url}/metrics").text)
    # Requests, by model and backend, with their latency.
    assert total(m, "modelyard_requests_total", protocol="http", op="infer", code="200", model="m010") == 4
    assert total(m, "modelyard_requests_total", model="m010", backend=home) == 4
    assert total(m, "modelyard_requests_total", code="200") == 6
    assert total(m, "modelyard_requests_total", code="503", model="broken") == 1
    assert total(m, "modelyard_requests_total", code="404", model="", backend="") == 1
    assert total(m, "modelyard_request_seconds_count", model="m010") == 4
    assert total(m, "modelyard_request_seconds_count") == 8
    assert total(m, "modelyard_backend_request_seconds_count") == 6  # the 404 and the failed load sent nothing
    assert total(m, "modelyard_backend_requests_total", outcome="ok") == 6
    assert "no-such-model" not in label_values(m, "modelyard_requests_total", "model")
    # Placement: 3 hits, 4 misses (three loads and the failed one, which had no backend to report).
    assert total(m, "modelyard_placement_total", result="hit", backend=home) == 3
    assert total(m, "modelyard_placement_total", result="miss") == 4
    assert total(m, "modelyard_placement_total", result="miss", backend="") == 1
    assert total(m, "modelyard_cold_wait_seconds_count") == 4
    # Loads and unloads: three good loads, one failed; two evictions (for m012, then for broken), with idle times.
    assert total(m, "modelyard_loads_total", result="ok") == 3
    assert total(m, "modelyard_loads_total", result="failed") == 1
    assert total(m, "modelyard_load_seconds_count", result="ok") == 3
    assert total(m, "modelyard_load_seconds_count", result="failed") == 1
    assert total(m, "modelyard_unloads_total", reason="evicted", result="ok") == 2
    assert total(m, "modelyard_evictions_total") == 2
    assert total(m, "modelyard_eviction_idle_seconds_count") == 2
    assert total(m, "modelyard_load_joins_total") == 0
    # What the backends hold, as this gateway sees it.
    assert total(m, "modelyard_backend_capacity_models") == 2
    assert total(m, "modelyard_backend_models", state="ready") == 1  # broken's slot is free again
    assert total(m, "modelyard_backend_models", state="failed") == 1
    assert total(m, "modelyard_backend_healthy") == 2
    assert total(m, "modelyard_models_registered") == 4

    lines = log_lines(gw)
    events = [line for line in lines if "event" in line]
    loads = [e for e in events if e["event"] == "load"]
    assert [e["model"] for e in loads] == ["m010", "m011", "m012"]
    assert loads[0]["request_id"] == "req-cold-1" and loads[0]["backend"] == home and loads[0]["seconds"] > 0
    evicted = [e for e in events if e["event"] == "eviction"]
    assert [e["for_model"] for e in evicted] == ["m012", "broken"]
    assert evicted[0]["model"] in ("m010", "m011") and evicted[0]["idle_seconds"] >= 0
    (failed_load,) = [e for e in events if e["event"] == "load_failed"]
    assert failed_load["model"] == "broken" and failed_load["request_id"] == "req-broken"
    failed = {e["code"]: e for e in events if e["event"] == "request_failed"}
    assert set(failed) == {"503", "404"}
    assert failed["503"]["level"] == "warning" and failed["503"]["request_id"] == "req-broken"
    assert failed["503"]["model"] == "broken" and "failed to load" in failed["503"]["msg"]
    assert failed["404"]["level"] == "info" and len(failed["404"]["request_id"]) == 16  # made up: none was sent
    admin = [e for e in events if e["event"] == "admin"]
    assert {(e["action"], e.get("model") or e.get("backend")) for e in admin} >= {
        ("put_backend", "triton-0"),
        ("put_model", "broken"),
    }
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)


def test_stats_endpoint_counts_this_gateways_placement_activity(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=2, models=["m013"])
    assert httpx.get(f"{gw.url}/admin/stats").status_code == 401
    for i in range(3):
        assert infer(gw, "m013", float(i)).status_code == 200
    with stack.admin(gw) as admin:
        stats = admin.get("/admin/stats").json()
    assert stats["models_registered"] == 1 and stats["metrics_model_labels"] == "top:50"
    (backend,) = stats["backends"]
    b = stats["backends"][backend]
    assert b["totals"] == {"hits": 2, "misses": 1, "loads": 1, "load_failures": 0, "evictions": 0}
    assert b["hit_ratio"] == round(2 / 3, 4) and b["loads_per_minute"] > 0
    assert [(e["kind"], e["model"], e["backend"]) for e in stats["recent"]] == [("load", "m013", backend)]
