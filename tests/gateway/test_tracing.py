"""Spans of the data plane, from an in-process gateway (spans kept by an in-memory exporter) in front of the real
Tritons of the test stack: the tree a cold request yields, links from requests that joined a load, and the
traceparent each backend call carries, over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
import tritonclient.grpc.aio as triton_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters.base import ForwardRequest
from adapters.triton import TritonAdapter
from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import free_port
from gateway.app import Gateway
from gateway.grpc_dataplane import build_server
from gateway.settings import Settings
from gateway.tracing import Tracing, provider_from_env
from placement.settings import PlacementSettings
from tests.fakes import record_forwards
from tests.gateway.conftest import TOKEN, StartGateway, infer_body

TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{CLIENT_SPAN}-01"


@dataclass
class InProcess:
    gateway: Gateway
    http: httpx.AsyncClient
    spans: InMemorySpanExporter
    sent: list[ForwardRequest]  # every request the gateway forwarded to a Triton

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[ForwardRequest]:
    return record_forwards(monkeypatch, TritonAdapter)


async def start(stack: LocalStack, tracing: Tracing, sent: list[ForwardRequest]) -> InProcess:
    settings = Settings(
        admin_token=TOKEN, grpc_port=free_port(), placement=PlacementSettings(redis_prefix=f"t{uuid.uuid4().hex[:8]}")
    )
    gateway = Gateway(settings, aioredis.from_url(stack.redis.url), tracing=tracing)
    await gateway.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway", timeout=120)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    for i, t in enumerate(stack.tritons):
        body = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": 4}}
        (await http.put(f"/admin/backends/triton-{i}", json=body, headers=admin)).raise_for_status()
    for name in ("m020", "m021", "m023"):
        (await http.put(f"/admin/models/{name}", json={"runtime": "triton"}, headers=admin)).raise_for_status()
    exporter = InMemorySpanExporter()
    if isinstance(tracing.provider, TracerProvider):
        tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return InProcess(gateway, http, exporter, sent)


@pytest.fixture
async def make_gateway(
    stack: LocalStack, sent: list[ForwardRequest]
) -> AsyncIterator[Callable[[Tracing], asyncio.Future[InProcess]]]:
    made: list[InProcess] = []

    async def make(tracing: Tracing) -> InProcess:
        gw = await start(stack, tracing, sent)
        made.append(gw)
        return gw

    yield make  # type: ignore[misc]
    for gw in made:
        await gw.http.aclose()
        await gw.gateway.stop()
    stack.unload_everything()


def one(spans: list[ReadableSpan], name: str, **attrs: object) -> ReadableSpan:
    found = [s for s in spans if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, f"{len(found)} spans {name} {attrs}: {[(s.name, s.attributes) for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_cold_request_yields_request_placement_load_and_backend_spans(
    make_gateway: Callable[[Tracing], asyncio.Future[InProcess]],
) -> None:
    gw = await make_gateway(Tracing(TracerProvider()))
    r = await gw.http.post("/v2/models/m020/infer", json=infer_body([1.0]), headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200 and r.headers["x-modelyard-cold"] == "1", r.text
    backend = r.headers["x-modelyard-backend"]
    spans = gw.finished()

    server = one(spans, "POST /v2/models/{name}/infer")
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE and parent_of(server) == int(CLIENT_SPAN, 16)
    assert server.attributes is not None
    assert server.attributes["modelyard.model"] == "m020" and server.attributes["modelyard.backend"] == backend
    assert server.attributes["http.response.status_code"] == 200
    placement = one(spans, "modelyard.placement", **{"modelyard.placement": "miss"})
    assert parent_of(placement) == server.context.span_id
    assert placement.attributes is not None and placement.attributes["modelyard.backend"] == backend
    load = one(spans, "modelyard.load", **{"modelyard.model": "m020"})
    assert parent_of(load) == placement.context.span_id
    assert load.attributes is not None and load.attributes["modelyard.backend"] == backend
    assert load.attributes["modelyard.load.result"] == "ok"
    call = one(spans, "modelyard.backend")
    assert call.kind is SpanKind.CLIENT and parent_of(call) == server.context.span_id
    assert call.attributes is not None and call.attributes["http.response.status_code"] == 200
    assert {s.context.trace_id for s in spans} == {int(TRACE, 16)}
    # The backend got the gateway's span as its parent, not the client's.
    (forwarded,) = gw.sent
    assert dict(forwarded.headers)["traceparent"] == f"00-{TRACE}-{format(call.context.span_id, '016x')}-01"

    # A warm request: an instant placement span (hit) and the backend call, in a trace of its own.
    gw.spans.clear()
    r = await gw.http.post("/v2/models/m020/infer", json=infer_body([2.0]))
    assert r.status_code == 200 and "x-modelyard-cold" not in r.headers
    spans = gw.finished()
    assert sorted(s.name for s in spans) == ["POST /v2/models/{name}/infer", "modelyard.backend", "modelyard.placement"]
    server = one(spans, "POST /v2/models/{name}/infer")
    assert server.parent is None
    assert one(spans, "modelyard.placement", **{"modelyard.placement": "hit"}).parent == server.context


async def test_requests_that_join_a_load_link_to_its_span(
    make_gateway: Callable[[Tracing], asyncio.Future[InProcess]],
) -> None:
    gw = await make_gateway(Tracing(TracerProvider()))
    answers = await asyncio.gather(
        *(gw.http.post("/v2/models/m021/infer", json=infer_body([float(i)])) for i in range(3))
    )
    assert [a.status_code for a in answers] == [200, 200, 200]
    spans = gw.finished()
    load = one(spans, "modelyard.load", **{"modelyard.model": "m021"})  # one load for the three
    placements = [s for s in spans if s.name == "modelyard.placement"]
    assert len(placements) == 3
    (starter,) = [p for p in placements if p.context.span_id == parent_of(load)]
    joiners = [p for p in placements if p is not starter]
    for p in joiners:
        assert [link.context.span_id for link in p.links] == [load.context.span_id]
        assert p.context.trace_id != load.context.trace_id  # each request is its own trace, linked to the load


async def test_grpc_calls_continue_the_clients_trace_and_carry_traceparent_to_the_backend(
    make_gateway: Callable[[Tracing], asyncio.Future[InProcess]],
) -> None:
    gw = await make_gateway(Tracing(TracerProvider()))
    server = build_server(gw.gateway.grpc, gw.gateway.settings)
    await server.start()
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{gw.gateway.settings.grpc_port}")
        x = triton_grpc.InferInput("INPUT0", [2], "FP32")
        x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        result = await client.infer("m023", [x], headers={"traceparent": TRACEPARENT}, client_timeout=120)
        assert result.as_numpy("OUTPUT0") is not None
        await client.close()
    finally:
        await server.stop(None)
    spans = gw.finished()
    rpc = one(spans, "inference.GRPCInferenceService/ModelInfer")
    assert rpc.kind is SpanKind.SERVER and parent_of(rpc) == int(CLIENT_SPAN, 16)
    assert rpc.attributes is not None and rpc.attributes["rpc.grpc.status_code_name"] == "OK"
    call = one(spans, "modelyard.backend")
    assert parent_of(call) == rpc.context.span_id
    (forwarded,) = [r for r in gw.sent if r.protocol == "kserve-grpc"]
    assert dict(forwarded.headers)["traceparent"] == f"00-{TRACE}-{format(call.context.span_id, '016x')}-01"


async def test_with_tracing_off_no_span_is_made_and_the_clients_traceparent_goes_on_as_it_came(
    make_gateway: Callable[[Tracing], asyncio.Future[InProcess]],
) -> None:
    gw = await make_gateway(Tracing())
    assert not gw.gateway.tracing.enabled
    r = await gw.http.post("/v2/models/m020/infer", json=infer_body([1.0]), headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    assert gw.finished() == []
    assert dict(gw.sent[0].headers)["traceparent"] == TRACEPARENT


class OtlpReceiver:
    """A stand-in OpenTelemetry collector: accepts OTLP/HTTP protobuf trace exports on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces":
                    receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[tuple[dict[str, str], str, str]]:
        """(resource attributes, span name, trace id) of every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out += [(resource, s.name, s.trace_id.hex()) for s in ss.spans]
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_gateway_exports_its_spans_with_otlp_when_the_endpoint_is_set(
    stack: LocalStack, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = OtlpReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        gw = start_gateway()
        stack.register(capacity=2, models=["m024"])
        r = httpx.post(
            f"{gw.url}/v2/models/m024/infer", json=infer_body([1.0]), headers={"traceparent": TRACEPARENT}, timeout=120
        )
        assert r.status_code == 200, r.text
        want = {"POST /v2/models/{name}/infer", "modelyard.placement", "modelyard.load", "modelyard.backend"}
        deadline = time.monotonic() + 30
        while not want <= {name for _, name, _ in receiver.spans()}:
            assert time.monotonic() < deadline, f"spans received: {receiver.spans()}"
            time.sleep(0.1)
        for resource, name, trace_id in receiver.spans():
            assert resource["service.name"] == "modelyard"
            if name in want:
                assert trace_id == TRACE
    finally:
        receiver.close()


def test_tracing_is_on_only_with_an_otlp_endpoint_and_http_protobuf() -> None:
    assert provider_from_env({}) is None
    assert provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) is None
    provider = provider_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert isinstance(provider, TracerProvider)
    provider.shutdown()
    with pytest.raises(ValueError, match="OTLP over HTTP/protobuf only"):
        provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
