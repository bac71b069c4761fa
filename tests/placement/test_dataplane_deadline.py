"""`DataPlane.call` with a deadline (what gRPC clients send) and the body-rewrite hook, on real Redis and fake
backends: the deadline bounds the cold wait and the backend call, the load itself goes on."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from adapters.base import ForwardRequest
from adapters.errors import BackendTimeout
from gateway.dataplane import Call, DataPlane
from gateway.errors import DeadlineExceeded
from gateway.metrics import Metrics
from gateway.settings import Settings
from placement.records import ModelSpec, RouteSpec
from tests.fakes import FakeAdapter, FakeBackend, record_forwards
from tests.placement.conftest import MakePlacer, register


def triton(name: str) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton"})


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[ForwardRequest]:
    """Every request the fake backends were sent; a request for a model named 'sleepy' takes its whole timeout."""

    async def sleepy(adapter: FakeAdapter, request: ForwardRequest) -> None:
        if request.model == "sleepy":
            await asyncio.sleep(request.timeout)
            raise BackendTimeout(f"backend {adapter.backend_id} did not answer within {request.timeout:g} s")

    return record_forwards(monkeypatch, FakeAdapter, sleepy)


async def dataplane(make_placer: MakePlacer, backends: dict[str, FakeBackend], *names: str) -> DataPlane:
    placer = await make_placer(load_timeout=5.0)
    await register(placer, backends, {"b1": 4}, [triton(n) for n in names])
    return DataPlane(placer, Settings(backend_timeout=30.0), Metrics(CollectorRegistry()))


def soon(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_deadline_ends_the_wait_for_a_cold_load_but_not_the_load(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], sent: list[ForwardRequest]
) -> None:
    dp = await dataplane(make_placer, backends, "m")
    gate = backends["b1"].gate = asyncio.Event()  # the load waits until the test opens the gate
    with pytest.raises(DeadlineExceeded, match="deadline passed while model 'm' was loading"):
        await dp.call(Call("kserve-grpc", "/s/ModelInfer", "m", None, "ModelInfer", deadline=soon(0.2)))
    assert sent == []
    gate.set()
    answer = await dp.call(Call("kserve-grpc", "/s/ModelInfer", "m", None, "ModelInfer", deadline=soon(5)))
    assert answer.response.body == b"m@b1"
    assert backends["b1"].loads == ["m"]  # the load the first call started, finished for the second


async def test_the_backend_gets_the_time_left_and_its_timeout_becomes_deadline_exceeded(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], sent: list[ForwardRequest]
) -> None:
    dp = await dataplane(make_placer, backends, "m", "sleepy")
    await dp.call(Call("kserve", "POST", "m", None, "infer"))  # loads m
    await dp.call(Call("kserve-grpc", "/s/ModelInfer", "m", None, "ModelInfer", deadline=soon(2.0)))
    assert sent[0].timeout == 30.0  # no deadline: the gateway's backend timeout, as for HTTP
    assert 1.5 < sent[1].timeout <= 2.0
    await dp.placer.ensure("sleepy")
    with pytest.raises(DeadlineExceeded, match="backend b1 did not answer 'sleepy' within the client's deadline"):
        await dp.call(Call("kserve-grpc", "/s/ModelInfer", "sleepy", None, "ModelInfer", deadline=soon(0.2)))
    with pytest.raises(DeadlineExceeded, match="deadline passed before the request for 'm' was sent"):
        await dp.call(Call("kserve-grpc", "/s/ModelInfer", "m", None, "ModelInfer", deadline=soon(-1)))
    assert len(sent) == 3


async def test_the_body_is_rewritten_only_when_another_model_answers(
    make_placer: MakePlacer,
    backends: dict[str, FakeBackend],
    sent: list[ForwardRequest],
) -> None:
    dp = await dataplane(make_placer, backends, "m")

    def rewrite(body: bytes, model: str) -> bytes:
        return body.replace(b"NAME", model.encode())

    await dp.call(Call("kserve-grpc", "/s/ModelInfer", "m", None, "ModelInfer", b"<NAME>", rewrite=rewrite))
    # A route resolves to another model: the hook renames the body for the backend.
    dp.placer.view.set_route("route", RouteSpec.parse("route", {"splits": [{"model": "m", "weight": 1}]}))
    answer = await dp.call(
        Call("kserve-grpc", "/s/ModelInfer", "route", None, "ModelInfer", b"<NAME>", rewrite=rewrite)
    )
    assert answer.model == "m"
    assert [(r.model, r.body) for r in sent] == [("m", b"<NAME>"), ("m", b"<m>")]
