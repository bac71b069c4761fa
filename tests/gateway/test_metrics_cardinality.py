"""/metrics stays bounded with thousands of models: an in-process gateway on real Redis, fake backends below the
adapter interface (2,000 real Triton models would not fit this machine), every model called."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.app import Gateway
from gateway.embedded_redis import RedisServer
from gateway.metrics import OTHER, LabelPolicy, Metrics, NameLabels
from gateway.settings import Settings
from placement.records import BackendSpec, ModelSpec
from placement.settings import PlacementSettings
from tests.fakes import FakeAdapter, FakeBackend
from tests.metrics_text import label_values, samples, total

MODELS = [f"model-{i:04d}" for i in range(2000)]
SERIES_BOUND = 2500  # with top:50; unbounded, the per-model latency histogram alone would be 2,000 x 21 series


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@pytest.fixture
async def gateway(
    redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    monkeypatch.setattr("gateway.app.METRICS_TICK", 3600.0)  # the test re-ranks the names itself
    settings = Settings(admin_token="t", placement=PlacementSettings(redis_prefix=prefix, usage_flush_interval=3600))
    gw = Gateway(settings, aioredis.from_url(redis_server.url))
    backends = {b: FakeBackend(b, 1500) for b in ("b1", "b2")}
    gw.placer._factory = lambda spec: FakeAdapter(backends[spec.id])
    for bid in backends:
        await gw.store.put_backend(
            BackendSpec.parse(bid, {"kind": "triton", "url": f"http://127.0.0.1:1/{bid}", "capacity": {"models": 1500}})
        )
    for name in MODELS:
        await gw.store.put_model(ModelSpec.parse(name, {"runtime": "triton"}))
    await gw.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://gateway")
    yield gw, client
    await client.aclose()
    await gw.stop()


async def call_all(client: httpx.AsyncClient, names: list[str], expect: int = 200) -> None:
    for start in range(0, len(names), 50):
        answers = await asyncio.gather(
            *(client.post(f"/v2/models/{n}/infer", content=b"{}") for n in names[start : start + 50])
        )
        assert {a.status_code for a in answers} == {expect}, answers[0].text


async def test_series_stay_bounded_with_2000_models_and_follow_the_traffic(
    gateway: tuple[Gateway, httpx.AsyncClient],
) -> None:
    gw, client = gateway
    await call_all(client, MODELS)
    await call_all(client, [f"nobody-{i}" for i in range(200)], expect=404)  # unknown names make no series
    text = (await client.get("/metrics")).text
    m = samples(text)
    assert total(m, "modelyard_requests_total", code="200") == 2000
    assert total(m, "modelyard_loads_total", result="ok") == 2000
    named = label_values(m, "modelyard_requests_total", "model") - {OTHER, ""}
    assert len(named) == 50 and named == set(MODELS[:50])  # the first 50 took the free places
    assert total(m, "modelyard_requests_total", model=OTHER) == 1950
    assert total(m, "modelyard_request_seconds_count", model=OTHER) == 1950
    assert series(text) < SERIES_BOUND, f"{series(text)} series"

    # Traffic moves to ten other models: after a rebalance they get labels, ten idle ones lose theirs (and
    # their series go, so churn doesn't add up); the total stays bounded.
    busy = MODELS[1000:1010]
    for _ in range(25):
        await call_all(client, busy)
    await call_all(client, MODELS[10:50])  # the rest of the labelled ones stay in use
    gw.metrics.rebalance()
    await call_all(client, busy)
    m = samples((await client.get("/metrics")).text)
    named = label_values(m, "modelyard_requests_total", "model") - {OTHER, ""}
    assert named == set(MODELS[10:50]) | set(busy)
    assert total(m, "modelyard_requests_total", model=busy[0]) == 1  # counted under its name since the rebalance
    assert label_values(m, "modelyard_request_seconds_bucket", "model") - {OTHER, ""} == named
    assert series((await client.get("/metrics")).text) < SERIES_BOUND
    assert total(m, "modelyard_metrics_named_models") == 50


def test_label_policy_reads_top_n_and_names() -> None:
    assert LabelPolicy.parse("top:50") == LabelPolicy(50, frozenset())
    assert LabelPolicy.parse("top:20,fraud-v3, resnet-7") == LabelPolicy(20, frozenset({"fraud-v3", "resnet-7"}))
    assert LabelPolicy.parse("none") == LabelPolicy(0, frozenset())
    assert LabelPolicy.parse("a,b") == LabelPolicy(0, frozenset({"a", "b"}))
    for bad in ("top:x", "top:-1", "bad name", "_other"):
        with pytest.raises(ValueError):
            LabelPolicy.parse(bad)


def test_listed_names_keep_their_label_whatever_the_traffic() -> None:
    labels = NameLabels(LabelPolicy(1, frozenset({"pinned"})))
    assert labels.label("pinned") == "pinned"
    assert labels.label("first") == "first"  # the one place by traffic, free
    assert labels.label("second") == OTHER
    for _ in range(20):  # more than twice first's traffic, and at least NameLabels.MIN_LEAD more
        labels.count("second")
    labels.count("first")
    assert labels.rebalance() == ["first"]
    assert labels.label("second") == "second" and labels.label("first") == OTHER
    assert labels.label("pinned") == "pinned"


def test_route_and_hedge_metrics_take_labels_through_the_same_bound() -> None:
    metrics = Metrics(CollectorRegistry(), LabelPolicy(1, frozenset()))
    metrics.route_requests.labels("r1", "m1").inc()
    metrics.route_requests.labels("r2", "m2").inc()
    metrics.shadows.labels("r2", "agree").inc()
    metrics.hedges.labels("sent").inc()
    value = metrics.registry.get_sample_value
    assert value("modelyard_route_requests_total", {"route": "r1", "model": "m1"}) == 1
    assert value("modelyard_route_requests_total", {"route": OTHER, "model": OTHER}) == 1
    assert value("modelyard_shadows_total", {"route": OTHER, "result": "agree"}) == 1
    assert value("modelyard_hedges_total", {"result": "sent"}) == 1
