"""`DataPlane.call` with routes, hedging, retries and shadows, on real Redis and fake backends whose answers
each test scripts (gates, failures). Assertions are about who answered, what was sent, cancelled and counted."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from adapters.base import ForwardRequest, ForwardResponse
from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable
from gateway.dataplane import Call, DataPlane
from gateway.metrics import Metrics
from gateway.routing import TARGET_HEADER
from gateway.settings import Settings
from placement.records import ModelSpec
from placement.registry import Registry
from placement.routes import RouteRegistry
from tests.fakes import FakeAdapter, FakeBackend
from tests.placement.conftest import MakePlacer, register

Rule = Callable[[str, ForwardRequest], Awaitable[ForwardResponse | None]]


class Script:
    """What the fake backends do with a forwarded request: `rule(backend, request)` may answer, raise or wait;
    None lets the fake answer `{model}@{backend}`. Records what was sent and what was cancelled."""

    def __init__(self) -> None:
        self.rule: Rule | None = None
        self.sent: list[tuple[str, str]] = []
        self.cancelled: list[tuple[str, str]] = []


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    s = Script()
    original = FakeAdapter.forward

    async def forward(self: FakeAdapter, request: ForwardRequest) -> ForwardResponse:
        s.sent.append((self.backend_id, request.model))
        try:
            if s.rule is not None:
                answer = await s.rule(self.backend_id, request)
                if answer is not None:
                    return answer
        except asyncio.CancelledError:
            s.cancelled.append((self.backend_id, request.model))
            raise
        return await original(self, request)

    monkeypatch.setattr(FakeAdapter, "forward", forward)
    return s


def model(name: str, **extra: Any) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton", **extra})


class Env:
    def __init__(self, dp: DataPlane, routes: RouteRegistry, registry: CollectorRegistry) -> None:
        self.dp = dp
        self.routes = routes
        self.registry = registry

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def infer(self, name: str, headers: dict[str, str] | None = None, body: bytes = b"{}") -> Any:
        return await self.dp.call(Call("kserve", "POST", name, None, "infer", body, header=(headers or {}).get))


@pytest.fixture
async def env(make_placer: MakePlacer, backends: dict[str, FakeBackend]) -> Callable[..., Awaitable[Env]]:
    made: list[DataPlane] = []

    async def build(*models: ModelSpec, copies: dict[str, int] | None = None, **settings: Any) -> Env:
        placer = await make_placer()
        await register(placer, backends, {"b1": 8, "b2": 8}, list(models))
        for name, n in (copies or {}).items():
            assert await placer.loader.ensure_copies(name, n) == n
        registry = CollectorRegistry()
        dp = DataPlane(placer, Settings(backend_timeout=30.0, **settings), Metrics(registry), rng=random.Random(5))
        made.append(dp)
        return Env(dp, RouteRegistry(Registry(placer)), registry)

    yield build
    for dp in made:
        await dp.aclose()


class StallFirst:
    """A rule: the first request sent waits for `gate` (`stalled` is set then); the others answer at once."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.stalled = asyncio.Event()
        self.calls = 0

    async def __call__(self, backend: str, request: ForwardRequest) -> None:
        self.calls += 1
        if self.calls == 1:
            self.stalled.set()
            await self.gate.wait()


def stall_first(gate: asyncio.Event) -> Rule:
    return StallFirst(gate)


# -- routes ---------------------------------------------------------------------------------------------------
async def test_a_route_answers_with_the_model_it_resolved_to(env: Any, script: Script) -> None:
    e: Env = await env(model("a"), model("b"), copies={"a": 1, "b": 1})
    await e.routes.put_route("r", {"splits": [{"model": "a", "weight": 1}, {"model": "b", "weight": 0}]})
    answer = await e.infer("r")
    assert (answer.model, answer.response.body) == ("a", f"a@{answer.backend}".encode())
    answer = await e.infer("r", {TARGET_HEADER: "b"})
    assert answer.model == "b"
    # gRPC names the model in the body: it is rewritten for the model that answers.
    call = Call(
        "kserve-grpc", "/s/ModelInfer", "r", None, "ModelInfer", b"<r>", rewrite=lambda body, m: f"<{m}>".encode()
    )
    assert (await e.dp.call(call)).model == "a"
    assert e.metric("modelyard_route_requests_total", route="r", model="a") == 2
    assert e.metric("modelyard_route_requests_total", route="r", model="b") == 1


async def test_shares_of_a_split_through_the_data_plane(env: Any, script: Script) -> None:
    e: Env = await env(model("a"), model("b"), copies={"a": 1, "b": 1})
    await e.routes.put_route("r", {"splits": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}]})
    got = Counter([(await e.infer("r")).model for _ in range(2000)])
    assert abs(got["b"] / 2000 - 0.10) < 0.02, got


# -- hedging --------------------------------------------------------------------------------------------------
async def test_a_stalled_request_is_answered_by_the_hedge_and_the_first_copy_is_cancelled(
    env: Any, script: Script
) -> None:
    e: Env = await env(model("m", hedge={"after_ms": 20, "max_extra_percent": 100}), copies={"m": 2})
    gate = asyncio.Event()
    script.rule = stall_first(gate)
    answer = await e.infer("m")
    first, second = script.sent
    assert answer.hedged and answer.backend == second[0] != first[0]
    assert answer.response.body == f"m@{second[0]}".encode()
    await asyncio.sleep(0)
    assert script.cancelled == [first]
    assert e.metric("modelyard_hedges_total", result="sent") == 1
    assert e.metric("modelyard_hedges_total", result="won") == 1


async def test_requests_faster_than_the_delay_are_not_hedged(env: Any, script: Script) -> None:
    e: Env = await env(model("m", hedge={"after_ms": 5000, "max_extra_percent": 100}), copies={"m": 2})
    answers = [await e.infer("m") for _ in range(20)]
    assert not any(a.hedged for a in answers)
    assert len(script.sent) == 20 and e.metric("modelyard_hedges_total", result="sent") == 0


async def test_when_every_call_is_slow_hedges_stay_within_the_budget(env: Any, script: Script) -> None:
    e: Env = await env(model("m"), copies={"m": 2})
    await e.routes.put_route(
        "r", {"splits": [{"model": "m", "weight": 1}], "hedge": {"after_ms": 1, "max_extra_percent": 10}}
    )

    async def slow(backend: str, request: ForwardRequest) -> None:
        await asyncio.sleep(0.02)

    script.rule = slow
    answers = await asyncio.gather(*(e.infer("r") for _ in range(200)))
    assert all(a.response.status == 200 for a in answers)
    sent = e.metric("modelyard_hedges_total", result="sent")
    assert 1 <= sent <= 20 and len(script.sent) == 200 + sent
    assert e.metric("modelyard_hedges_total", result="refused_budget") == 200 - sent


async def test_with_after_ms_null_the_delay_is_the_models_observed_p95(env: Any, script: Script) -> None:
    e: Env = await env(
        model("m", hedge={"after_ms": None, "max_extra_percent": 100}), copies={"m": 2}, latency_min_samples=20
    )
    for _ in range(19):  # too few latencies to know a p95: no hedge, even for a slow call
        await e.infer("m")
    gate = asyncio.Event()
    script.rule = rule = StallFirst(gate)
    task = asyncio.create_task(e.infer("m"))
    await rule.stalled.wait()
    await asyncio.sleep(0.05)
    assert len(script.sent) == 20 and not task.done()  # the 20th call waits, unhedged
    gate.set()
    assert not (await task).hedged
    gate.clear()
    script.rule = stall_first(gate)
    answer = await e.infer("m")  # now 20 latencies are known; a stalled call is hedged after their p95
    assert answer.hedged
    gate.set()


async def test_a_model_with_one_ready_copy_is_not_hedged(env: Any, script: Script) -> None:
    e: Env = await env(model("m", hedge={"after_ms": 1, "max_extra_percent": 100}), copies={"m": 1})
    gate = asyncio.Event()
    script.rule = stall_first(gate)
    task = asyncio.create_task(e.infer("m"))
    await asyncio.sleep(0.05)
    gate.set()
    assert not (await task).hedged and len(script.sent) == 1


# -- retries --------------------------------------------------------------------------------------------------
async def test_a_refused_connection_is_retried_on_the_other_copy_and_takes_the_backend_out(
    env: Any, script: Script
) -> None:
    e: Env = await env(model("m"), copies={"m": 2})

    async def refuse_first(backend: str, request: ForwardRequest) -> None:
        if len(script.sent) == 1:
            raise BackendRefused(f"backend {backend} could not be reached: ConnectionRefusedError", backend)

    script.rule = refuse_first
    answer = await e.infer("m")
    refused = script.sent[0][0]
    assert answer.response.status == 200 and answer.backend != refused
    assert e.dp.placer.view.reachable[refused] is False  # no more requests there until it is healthy again
    assert {(await e.infer("m")).backend for _ in range(5)} == {answer.backend}
    assert e.metric("modelyard_retries_total", reason="unavailable") == 1


async def test_a_503_answer_is_retried_once_on_another_copy(env: Any, script: Script) -> None:
    e: Env = await env(model("m"), copies={"m": 2})

    async def busy_once(backend: str, request: ForwardRequest) -> ForwardResponse | None:
        if len(script.sent) == 1:
            return ForwardResponse(503, [], b'{"error": "busy"}')
        return None

    script.rule = busy_once
    answer = await e.infer("m")
    assert answer.response.status == 200 and answer.backend != script.sent[0][0]
    assert e.metric("modelyard_retries_total", reason="status_503") == 1


async def test_retries_stop_when_the_budget_is_spent(env: Any, script: Script) -> None:
    e: Env = await env(model("m"), copies={"m": 2}, retry_budget_min=0, retry_budget_percent=0)

    async def refuse(backend: str, request: ForwardRequest) -> None:
        raise BackendUnavailable(f"backend {backend} closed the connection", backend)

    script.rule = refuse
    with pytest.raises(BackendUnavailable):
        await e.infer("m")
    assert len(script.sent) == 1
    assert e.metric("modelyard_retries_refused_total", reason="budget") == 1


# -- shadows --------------------------------------------------------------------------------------------------
async def shadow_route(e: Env, shadow: str, percent: float = 100) -> None:
    await e.routes.put_route(
        "r", {"splits": [{"model": "a", "weight": 1}], "shadows": [{"model": shadow, "percent": percent}]}
    )


async def test_the_primary_answer_is_the_same_with_a_shadow_and_the_shadow_is_compared(
    env: Any, script: Script
) -> None:
    e: Env = await env(model("a"), model("s"), copies={"a": 1, "s": 1})
    plain = await e.infer("a")
    await shadow_route(e, "s")
    shadowed = await e.infer("r")
    assert (shadowed.response, shadowed.model, shadowed.backend) == (plain.response, "a", plain.backend)
    await e.dp.shadows.join()
    assert ("s" in {m for _, m in script.sent}) and e.metric("modelyard_shadows_total", route="r", result="sent") == 1
    assert e.metric("modelyard_shadows_total", route="r", result="disagree") == 1  # "s@b" is not "a@b"
    await shadow_route(e, "a")  # the same model as a shadow answers alike
    await e.infer("r")
    await e.dp.shadows.join()
    assert e.metric("modelyard_shadows_total", route="r", result="agree") == 1


async def test_a_failing_or_stalling_shadow_changes_nothing_and_is_dropped_when_it_falls_behind(
    env: Any, script: Script
) -> None:
    e: Env = await env(model("a"), model("s"), copies={"a": 1, "s": 1}, shadow_queue=2, shadow_concurrency=1)
    await shadow_route(e, "s")

    async def shadow_fails(backend: str, request: ForwardRequest) -> None:
        if request.model == "s":
            raise BackendTimeout(f"backend {backend} did not answer", backend)

    script.rule = shadow_fails
    assert (await e.infer("r")).response.body.startswith(b"a@")
    await e.dp.shadows.join()
    assert e.metric("modelyard_shadows_total", route="r", result="failed") == 1

    gate, taken = asyncio.Event(), asyncio.Event()

    async def shadow_stalls(backend: str, request: ForwardRequest) -> None:
        if request.model == "s":
            taken.set()
            await gate.wait()

    script.rule = shadow_stalls
    answers = [await e.infer("r")]
    await taken.wait()  # the only worker is now stuck on this shadow
    answers += [await e.infer("r") for _ in range(10)]
    assert all(a.model == "a" and a.response.status == 200 for a in answers)
    # 2 wait in the queue, the other 8 are dropped
    assert e.metric("modelyard_shadows_dropped_total", route="r", reason="queue_full") == 8
    gate.set()
    await e.dp.shadows.join()
    assert e.metric("modelyard_shadows_total", route="r", result="sent") == 1 + 1 + 2


async def test_a_shadow_to_a_cold_model_is_dropped_not_loaded(
    env: Any, script: Script, backends: dict[str, FakeBackend]
) -> None:
    e: Env = await env(model("a"), model("s"), copies={"a": 1})
    await shadow_route(e, "s")
    await e.infer("r")
    await e.dp.shadows.join()
    assert e.metric("modelyard_shadows_dropped_total", route="r", reason="cold") == 1
    assert all("s" not in b.loads for b in backends.values())


async def test_shadows_get_their_percent_of_the_requests(env: Any, script: Script) -> None:
    e: Env = await env(model("a"), model("s"), copies={"a": 1, "s": 1})
    await shadow_route(e, "s", percent=30)
    for _ in range(2000):
        await e.infer("r")
    await e.dp.shadows.join()
    # The calls never wait (fake backends), so the workers only run at the end: the queue took 256, the rest were
    # dropped. Sent or dropped, each chosen shadow is counted once.
    sent = e.metric("modelyard_shadows_total", route="r", result="sent")
    dropped = e.metric("modelyard_shadows_dropped_total", route="r", reason="queue_full")
    assert sent == 256 and abs((sent + dropped) / 2000 - 0.30) < 0.03


async def test_gateway_failures_in_a_row_eject_a_backend_and_a_models_500s_do_not(env: Any, script: Script) -> None:
    e: Env = await env(model("m"), copies={"m": 2})
    view = e.dp.placer.view
    failing: dict[str, int] = {"b1": 500}

    async def answer(backend: str, request: ForwardRequest) -> ForwardResponse | None:
        status = failing.get(backend)
        return ForwardResponse(status, [], b'{"error": "x"}') if status else None

    script.rule = answer
    for _ in range(20):  # the model's own errors: passed through, never held against the backend
        await e.infer("m")
    assert not view.outliers.ejected("b1") and sum(1 for b, _ in script.sent if b == "b1") >= 5
    failing["b1"] = 502
    for _ in range(40):
        await e.infer("m")
        if view.outliers.ejected("b1"):
            break
    assert view.outliers.ejected("b1") and not view.outliers.ejected("b2")
    assert e.metric("modelyard_backend_ejections_total", backend="b1") == 1
    mark = len(script.sent)
    for _ in range(5):
        assert (await e.infer("m")).response.status == 200
    assert {b for b, _ in script.sent[mark:]} == {"b2"}  # out of this gateway's rotation
    failing["b2"] = 503  # every backend failing: the cap keeps the last one in rotation
    for _ in range(10):
        await e.infer("m")
    assert not view.outliers.ejected("b2")
