"""The gRPC forwarding boundary: `TritonAdapter.forward` for "kserve-grpc" against an in-process grpc.aio server
that answers with the statuses and words real Triton 2.51 gives (deploy/localstack/TRITON_FACTS.md, section g).
Real Triton is exercised end to end in tests/gateway/test_grpc_dataplane.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

from adapters.base import ForwardRequest
from adapters.errors import BackendTimeout, BackendUnavailable, ModelNotLoaded
from adapters.triton import TritonAdapter
from deploy.localstack.triton import free_port

SERVICE = "inference.GRPCInferenceService"
Answer = Callable[[bytes, Any], Awaitable[bytes]]


@dataclass
class Backend:
    """A stand-in gRPC backend: `answer` decides each reply; requests and metadata are recorded."""

    url: str
    answer: Answer
    seen: list[tuple[str, bytes, dict[str, str | bytes]]] = field(default_factory=list)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async def echo(body: bytes, context: Any) -> bytes:
        return b"answer:" + body

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    b = Backend(f"127.0.0.1:{port}", echo)

    def handler(method: str) -> grpc.RpcMethodHandler:
        async def handle(body: bytes, context: Any) -> bytes:
            b.seen.append((method, body, dict(context.invocation_metadata())))
            return await b.answer(body, context)

        return grpc.unary_unary_rpc_method_handler(handle)

    methods = ("ModelInfer", "ModelMetadata", "ModelStatistics", "ModelReady")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {m: handler(m) for m in methods}),))
    await server.start()
    yield b
    await server.stop(None)


def request(op: str = "ModelInfer", body: bytes = b"\x0a\x01m", timeout: float = 5.0, **kw: Any) -> ForwardRequest:
    return ForwardRequest("kserve-grpc", f"/{SERVICE}/{op}", "m", None, op, body, kw.get("headers", []), timeout)


def aborting(code: grpc.StatusCode, details: str) -> Answer:
    async def answer(body: bytes, context: Any) -> bytes:
        await context.abort(code, details)
        return b""

    return answer


async def test_bytes_and_metadata_go_through_unchanged(backend: Backend) -> None:
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=backend.url)
    body = bytes(range(256)) * 10
    headers = [("x-request-id", "abc"), ("traceparent", "00-1-2-01"), ("trace-bin", "\x00\xff")]
    try:
        resp = await adapter.forward(request(body=body, headers=headers))
    finally:
        await adapter.aclose()
    assert resp.status == 0 and resp.body == b"answer:" + body and resp.details == ""
    method, got, md = backend.seen[0]
    assert method == "ModelInfer" and got == body
    assert md["x-request-id"] == "abc" and md["traceparent"] == "00-1-2-01"
    assert md["trace-bin"] == b"\x00\xff"  # binary metadata travels as latin-1 text inside modelyard


@pytest.mark.parametrize(
    ("code", "details", "op"),
    [
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'm' is not found", "ModelInfer"),
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'm' has no available versions", "ModelMetadata"),
        (grpc.StatusCode.UNAVAILABLE, "Request for unknown model: 'm' version 1 is not at ready state", "ModelInfer"),
        (grpc.StatusCode.INVALID_ARGUMENT, "requested model 'm' is not available", "ModelStatistics"),
    ],
)
async def test_tritons_not_loaded_answers_raise_model_not_loaded(
    backend: Backend, code: grpc.StatusCode, details: str, op: str
) -> None:
    backend.answer = aborting(code, details)
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=backend.url)
    try:
        with pytest.raises(ModelNotLoaded, match="backend t0 does not hold 'm'"):
            await adapter.forward(request(op))
    finally:
        await adapter.aclose()


async def test_other_backend_statuses_pass_through_with_code_and_details(backend: Backend) -> None:
    backend.answer = aborting(grpc.StatusCode.INVALID_ARGUMENT, "unexpected inference input 'X' for model 'm'")
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=backend.url)
    try:
        resp = await adapter.forward(request())
        # The same words from ModelInfer are not "not loaded": only ModelStatistics says it that way.
        backend.answer = aborting(grpc.StatusCode.INVALID_ARGUMENT, "requested model 'm' is not available")
        other = await adapter.forward(request())
    finally:
        await adapter.aclose()
    assert (resp.status, resp.body, resp.details) == (3, b"", "unexpected inference input 'X' for model 'm'")
    assert other.status == 3


async def test_the_deadline_raises_backend_timeout(backend: Backend) -> None:
    async def slow(body: bytes, context: Any) -> bytes:
        await asyncio.sleep(5)
        return b""

    backend.answer = slow
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=backend.url)
    try:
        with pytest.raises(BackendTimeout, match=r"did not answer ModelInfer over gRPC within 0\.2 s"):
            await adapter.forward(request(timeout=0.2))
    finally:
        await adapter.aclose()


async def test_an_unreachable_backend_and_a_missing_grpc_url_are_backend_unavailable() -> None:
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable, match=r"backend t0 is unavailable over gRPC at 127\.0\.0\.1:"):
            await adapter.forward(request())
    finally:
        await adapter.aclose()
    no_grpc = TritonAdapter("t9", "http://127.0.0.1:1")
    with pytest.raises(BackendUnavailable, match="backend t9 has no gRPC endpoint: register it with a grpc_url"):
        await no_grpc.forward(request())
    await no_grpc.aclose()


async def test_one_channel_serves_concurrent_calls_and_closes(backend: Backend) -> None:
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=backend.url)
    answers = await asyncio.gather(*(adapter.forward(request(body=bytes([i]))) for i in range(50)))
    assert sorted(a.body for a in answers) == sorted(b"answer:" + bytes([i]) for i in range(50))
    await adapter.aclose()
    await adapter.aclose()  # twice is fine


async def test_a_call_cancelled_mid_flight_is_cancelled_on_the_backend_and_the_channel_goes_on(
    backend: Backend,
) -> None:
    """A hedge's loser over gRPC: cancelling the forward cancels the RPC (the backend's context sees it), and the
    next call on the same channel gets its own answer."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stall_first(body: bytes, context: Any) -> bytes:
        if body == b"stale":
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return b"answer:" + body

    backend.answer = stall_first
    adapter = TritonAdapter("t0", "http://127.0.0.1:1", grpc_url=backend.url)
    try:
        task = asyncio.create_task(adapter.forward(request(body=b"stale")))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(10):
            await cancelled.wait()
        assert (await adapter.forward(request(body=b"fresh"))).body == b"answer:fresh"
    finally:
        await adapter.aclose()
