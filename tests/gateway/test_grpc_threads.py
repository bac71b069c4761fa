"""`--grpc-server threads` (gateway.grpc_threads): an in-process gateway in front of the real Tritons of the test
stack, its gRPC port served by the threaded server. Which path a call took is read from the fast path's count:
a warm ModelInfer is answered in the thread, a cold one through the loop; the client's deadline bounds the
thread's forward; the loop gets the call's bookkeeping; a full pool answers RESOURCE_EXHAUSTED at once.
The same server runs every other gRPC test when MODELYARD_GRPC_SERVER=threads."""

from __future__ import annotations

import asyncio
import queue
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
import tritonclient.grpc.service_pb2 as pb

from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import free_port
from gateway.app import Gateway
from gateway.cli import build_parser, settings_from_args
from gateway.grpc_fastpath import time_remaining
from gateway.grpc_threads import ThreadedGrpcServer
from gateway.settings import Settings
from placement.settings import PlacementSettings
from tests.gateway.conftest import TOKEN, offset
from tests.gateway.test_grpc_dataplane import SERVICE, infer_request, outputs
from tests.metrics_text import samples, total
from tests.waiting import eventually, eventually_async

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Threaded:
    gateway: Gateway
    server: ThreadedGrpcServer
    http: httpx.AsyncClient
    target: str

    @property
    def taken(self) -> int:
        assert self.server.fast is not None
        return self.server.fast.taken

    async def metric(self, name: str, **labels: str) -> float:
        return total(samples((await self.http.get("/metrics")).text), name, **labels)


@pytest.fixture
async def threaded(stack: LocalStack) -> AsyncIterator[Callable[..., asyncio.Future[Threaded]]]:
    made: list[Threaded] = []

    async def make(models: list[str], threads: int = 8, max_calls: int = 64) -> Threaded:
        settings = Settings(
            admin_token=TOKEN,
            grpc_port=free_port(),
            grpc_server="threads",
            placement=PlacementSettings(redis_prefix=f"t{uuid.uuid4().hex[:8]}"),
        )
        gateway = Gateway(settings, aioredis.from_url(stack.redis.url))
        await gateway.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway", timeout=120)
        for i, t in enumerate(stack.tritons):
            body = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": 4}}
            (await http.put(f"/admin/backends/triton-{i}", json=body, headers=ADMIN)).raise_for_status()
        for name in models:
            (await http.put(f"/admin/models/{name}", json={"runtime": "triton"}, headers=ADMIN)).raise_for_status()
        server = ThreadedGrpcServer(gateway.grpc, settings, reuseport=False, threads=threads, max_calls=max_calls)
        await server.start()
        made.append(Threaded(gateway, server, http, f"127.0.0.1:{settings.grpc_port}"))
        return made[-1]

    yield make  # type: ignore[misc]
    for t in made:
        await t.server.stop(0)
        await t.http.aclose()
        await t.gateway.stop()
    stack.unload_everything()


def infer(
    target: str, name: str, values: list[float], **kwargs: object
) -> tuple[pb.ModelInferResponse, dict[str, str]]:
    """One ModelInfer from a client of its own (run in a thread: the test's loop serves the gateway)."""
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(
            SERVICE + "ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        resp, info = call.with_call(infer_request(name, values), **kwargs)
        return resp, dict(info.initial_metadata())


def failed(target: str, method: str, request: object, **kwargs: object) -> grpc.RpcError:
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(SERVICE + method, request_serializer=type(request).SerializeToString)  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as caught:
            call(request, **kwargs)
        return caught.value


async def test_a_warm_call_is_answered_in_the_thread_a_cold_one_through_the_loop_and_the_loop_counts_both(
    threaded: Callable[..., asyncio.Future[Threaded]],
) -> None:
    gw = await threaded(["m030"])
    resp, md = await asyncio.to_thread(infer, gw.target, "m030", [1.0, 2.0], timeout=120)
    assert md["x-modelyard-cold"] == "1" and gw.taken == 0  # cold: the loop's handler loaded it
    assert outputs(resp) == {"OUTPUT0": [1.0 + offset("m030"), 2.0 + offset("m030")], "MODEL_NAME": "m030"}
    backend = md["x-modelyard-backend"]

    for i in range(3):
        resp, md = await asyncio.to_thread(infer, gw.target, "m030", [float(i)], metadata=(("x-request-id", "r1"),))
        assert outputs(resp)["OUTPUT0"] == [i + offset("m030")]
        assert md["x-modelyard-model"] == "m030" and md["x-modelyard-backend"] == backend
        assert "x-modelyard-cold" not in md
    assert gw.taken == 3

    # An error the backend answers passes through with its code and details, answered in the thread too.
    bad = pb.ModelInferRequest(model_name="m030")
    bad.inputs.add(name="NOPE", datatype="FP32", shape=[1])
    bad.raw_input_contents.append(b"\0\0\0\0")
    err = await asyncio.to_thread(failed, gw.target, "ModelInfer", bad, timeout=30)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "NOPE" in err.details()
    assert gw.taken == 4

    # The bookkeeping reached the loop: the requests are counted as the loop's path counts them, none is left
    # in flight, and the hits are placement hits.
    async def counted() -> bool:
        ok = await gw.metric("modelyard_requests_total", protocol="grpc", op="ModelInfer", code="OK")
        bad = await gw.metric("modelyard_requests_total", protocol="grpc", op="ModelInfer", code="INVALID_ARGUMENT")
        return ok == 4 and bad == 1

    await eventually_async(counted, "4 OK and 1 INVALID_ARGUMENT ModelInfer counted", interval=0.02)
    assert gw.gateway.placer.usage.inflight("m030", backend) == 0
    assert await gw.metric("modelyard_placement_total", result="hit") == 4
    assert await gw.metric("modelyard_backend_requests_total", backend=backend, api="kserve-grpc", outcome="ok") >= 4

    # Calls the fast path leaves alone go through the loop: a model the gateway does not know, the server's own.
    err = await asyncio.to_thread(failed, gw.target, "ModelInfer", infer_request("nope", [1.0]), timeout=30)
    assert err.code() is grpc.StatusCode.NOT_FOUND and "no model or route named 'nope'" in err.details()
    assert gw.taken == 4


async def test_the_clients_deadline_bounds_the_threads_forward(
    stack: LocalStack, threaded: Callable[..., asyncio.Future[Threaded]]
) -> None:
    gw = await threaded(["slow"])  # answers after 1 s
    r = await gw.http.post("/admin/models/slow/load", headers=ADMIN)
    assert r.status_code == 200
    err = await asyncio.to_thread(failed, gw.target, "ModelInfer", infer_request("slow", [1.0]), timeout=0.3)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer 'slow' within the client's deadline" in err.details()  # the gateway's, not grpc's
    assert gw.taken == 1
    await eventually_async(
        lambda: gw.metric("modelyard_requests_total", op="ModelInfer", code="DEADLINE_EXCEEDED"),
        "the call counted",
        interval=0.02,
    )


async def test_a_full_pool_answers_resource_exhausted_at_once_and_serves_again_when_a_thread_is_free(
    threaded: Callable[..., asyncio.Future[Threaded]],
) -> None:
    gw = await threaded([], threads=1, max_calls=1)
    live = pb.ServerLiveRequest()
    answers: queue.SimpleQueue[pb.ServerLiveResponse | None] = queue.SimpleQueue()

    def server_live() -> None:
        with grpc.insecure_channel(gw.target) as ch:
            call = ch.unary_unary(
                SERVICE + "ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            answers.put(call(live, timeout=30))

    await asyncio.to_thread(server_live)
    assert answers.get().live  # a call through the loop (the server's own answer)

    # An open stream holds the only thread. It counts as open once the server's handler has answered its first
    # message (an in-stream error for a model nobody knows): opened too soon after the call above, while the
    # server still counted that call, the stream itself would be refused, and is opened again.
    channel = grpc.insecure_channel(gw.target)
    streams: list[tuple[Iterator[pb.ModelStreamInferResponse], queue.SimpleQueue[pb.ModelInferRequest | None]]] = []

    def opened() -> bool:
        held: queue.SimpleQueue[pb.ModelInferRequest | None] = queue.SimpleQueue()

        def messages() -> Iterator[pb.ModelInferRequest]:
            yield infer_request("nope", [1.0])
            while (m := held.get()) is not None:
                yield m

        stream = channel.stream_stream(
            SERVICE + "ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )(messages(), timeout=60)
        try:
            first = next(stream)
        except grpc.RpcError:  # refused: end its request side too, and try again
            held.put(None)
            raise
        assert "no model or route named 'nope'" in first.error_message, first
        streams.append((stream, held))
        return True

    await asyncio.to_thread(eventually, opened, "a stream the server holds open", retry_on=(grpc.RpcError,))
    stream, held = streams[-1]
    try:

        async def exhausted() -> bool:
            return await asyncio.to_thread(failed_now, gw.target) is grpc.StatusCode.RESOURCE_EXHAUSTED

        await eventually_async(exhausted, "a call past the pool answered RESOURCE_EXHAUSTED", interval=0.02)
    finally:
        held.put(None)  # the client half-closes: the stream ends and frees the thread
    assert await asyncio.to_thread(list, stream) == []
    channel.close()
    await asyncio.to_thread(server_live)
    assert answers.get().live


def failed_now(target: str) -> grpc.StatusCode | None:
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(SERVICE + "ServerLive", request_serializer=pb.ServerLiveRequest.SerializeToString)
        try:
            call(pb.ServerLiveRequest(), timeout=5)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return None


class _Context:
    def __init__(self, left: float) -> None:
        self.left = left

    def time_remaining(self) -> float:
        return self.left


def test_the_synchronous_servers_no_deadline_is_no_deadline() -> None:
    # grpcio's synchronous server says 9.2e18 s for a call without a deadline; grpc.aio says None, and the
    # loop's handlers (a stream's backend calls) must not get a timeout that large.
    assert time_remaining(_Context(9.223372035058277e18)) is None  # type: ignore[arg-type]
    assert time_remaining(_Context(5.0)) == 5.0  # type: ignore[arg-type]


def test_the_grpc_server_flag_is_aio_by_default_and_threads_by_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def server(argv: list[str]) -> str:
        return settings_from_args(build_parser().parse_args(["serve", "--admin-token", "t", *argv])).grpc_server

    monkeypatch.delenv("MODELYARD_GRPC_SERVER", raising=False)
    assert server([]) == "aio"
    assert server(["--grpc-server", "threads"]) == "threads"
    monkeypatch.setenv("MODELYARD_GRPC_SERVER", "threads")
    assert server([]) == "threads"
    with pytest.raises(SystemExit, match="--grpc-server must be threads or aio"):
        server(["--grpc-server", "sync"])
