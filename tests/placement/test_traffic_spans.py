"""Spans of hedged and shadowed requests (`DataPlane` with tracing on, real Redis, fake backends): a hedge is a
span with its own backend call, the losing call is cancelled without being an error, and a shadow, sent later
by a worker, is a span under the request that made it and nothing of any other request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from adapters.base import ForwardRequest
from gateway.dataplane import Call, DataPlane
from gateway.logs import CURRENT, RequestScope
from gateway.metrics import Metrics
from gateway.observe import Observer
from gateway.settings import Settings
from gateway.tracing import Tracing
from placement.records import ModelSpec
from placement.registry import Registry
from placement.routes import RouteRegistry
from tests.fakes import FakeAdapter, FakeBackend, record_forwards
from tests.placement.conftest import MakePlacer, register


def model(name: str, **extra: Any) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton", **extra})


@pytest.fixture
async def traced(make_placer: MakePlacer, backends: dict[str, FakeBackend]) -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    placer = await make_placer()
    models = [model("m", hedge={"after_ms": 20, "max_extra_percent": 100}), model("a"), model("s")]
    await register(placer, backends, {"b1": 8, "b2": 8}, models)
    for name, copies in (("m", 2), ("a", 1), ("s", 1)):
        assert await placer.loader.ensure_copies(name, copies) == copies
    metrics = Metrics(CollectorRegistry())
    dp = DataPlane(placer, Settings(backend_timeout=30.0), metrics, obs=Observer(metrics, Tracing(provider)))
    yield dp, exporter, RouteRegistry(Registry(placer))
    await dp.aclose()


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_hedge_is_a_span_and_the_cancelled_first_call_is_no_error(
    traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dp, exporter, _ = traced
    gate = asyncio.Event()  # never opened: the first call stalls until the hedge wins and it is cancelled

    async def stall_first(adapter: FakeAdapter, request: ForwardRequest) -> None:
        if len(sent) == 1:
            await gate.wait()

    sent = record_forwards(monkeypatch, FakeAdapter, stall_first)
    with dp.tracing.span("request") as request:
        answer = await dp.call(Call("kserve", "POST", "m", None, "infer", b"{}"))
    assert answer.hedged
    await asyncio.sleep(0)
    spans = list(exporter.get_finished_spans())
    (hedge,) = named(spans, "modelyard.hedge")
    assert hedge.parent == request.get_span_context() and hedge.attributes is not None
    assert hedge.attributes["modelyard.backend"] == answer.backend
    calls = {s.parent.span_id if s.parent else None: s for s in named(spans, "modelyard.backend")}
    first = calls[request.get_span_context().span_id]
    assert first.attributes is not None and first.attributes["modelyard.outcome"] == "cancelled"
    assert first.status.status_code is not StatusCode.ERROR
    assert calls[hedge.context.span_id].attributes["modelyard.outcome"] == "ok"  # type: ignore[index]
    assert hedge.status.status_code is not StatusCode.ERROR


async def test_a_shadow_is_a_span_under_its_request_and_carries_nothing_of_another(
    traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dp, exporter, routes = traced
    await routes.put_route("r", {"splits": [{"model": "a", "weight": 1}], "shadows": [{"model": "s", "percent": 100}]})
    seen: dict[str, tuple[object, str]] = {}

    async def note(adapter: FakeAdapter, request: ForwardRequest) -> None:
        seen[request.model] = (CURRENT.get(), trace.get_current_span().get_span_context().span_id)

    record_forwards(monkeypatch, FakeAdapter, note)
    requests = []
    for i in range(2):  # the first request starts the shadow workers: the second's shadow must not be under it
        token = CURRENT.set(RequestScope([(b"x-request-id", f"req-{i}".encode())]))  # as a front end does
        try:
            with dp.tracing.span("request") as request:
                await dp.call(Call("kserve", "POST", "r", None, "infer", b"{}"))
        finally:
            CURRENT.reset(token)
        requests.append(request.get_span_context())
        await dp.shadows.join()
    spans = list(exporter.get_finished_spans())
    shadows = named(spans, "modelyard.shadow")
    assert [s.parent for s in shadows] == requests
    assert shadows[1].attributes is not None and shadows[1].attributes["modelyard.route"] == "r"
    (shadow_call,) = [s for s in named(spans, "modelyard.backend") if s.parent == shadows[1].context]
    assert shadow_call.attributes is not None and shadow_call.attributes["modelyard.model"] == "s"
    worker_request, worker_span = seen["s"]
    assert worker_request is None  # the worker's context is its own: no request's ids in its log lines
    assert worker_span == shadows[1].context.span_id
