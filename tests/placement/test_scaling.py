"""Copies of a model follow its request rate (`placement.scaling`), and `min_copies` are kept, on distinct
backends. Real Redis, fake backends, a fake clock: each round is one reconcile of the leader 10 s later."""

from __future__ import annotations

import pytest

from placement.clock import FakeClock
from placement.placer import Placer
from placement.records import ModelSpec
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register


async def one_round(placer: Placer, clock: FakeClock, model: str, requests: int) -> list[str]:
    """`requests` requests to `model` over 10 s, flushed as the gateway does, then a reconcile round."""
    for i in range(requests):
        ready = placer.view.ready_backends(model)
        backend = ready[i % len(ready)]
        placer.usage.start(model, backend)
        placer.usage.finish(model, backend)
    await placer.store.touch_many(*placer.usage.drain_all())
    clock.advance(10.0)
    await placer.reconciler.reconcile()
    return sorted(placer.view.ready_backends(model))


def holding(backends: dict[str, FakeBackend], model: str) -> list[str]:
    return sorted(b.id for b in backends.values() if model in b.held)


@pytest.fixture
async def placer(make_placer: MakePlacer, backends: dict[str, FakeBackend]) -> Placer:
    p = await make_placer(scale_up_rate=10.0, scale_down_ratio=0.5, scale_down_rounds=2)
    models = [
        ModelSpec.parse("hot", {"runtime": "triton", "max_copies": 3}),
        ModelSpec.parse("kept", {"runtime": "triton", "min_copies": 2, "max_copies": 3}),
    ]
    await register(p, backends, {"b1": 4, "b2": 4, "b3": 4}, models)
    return p


async def test_copies_are_added_when_busy_and_given_back_when_cool(
    placer: Placer, clock: FakeClock, backends: dict[str, FakeBackend]
) -> None:
    await placer.ensure("hot")
    counts = []
    # req/s:  (baseline) 15    25    50    5     5     8     0     0     0
    for requests in (0, 150, 250, 500, 50, 50, 80, 0, 0, 0):
        ready = await one_round(placer, clock, "hot", requests)
        assert ready == holding(backends, "hot")  # Redis, the view and the backends agree; one copy per backend
        counts.append(len(ready))
    # Up one copy per round while the rate per copy is over 10/s, never past max_copies; down only after two
    # rounds under the lower line (5/s with one copy fewer), not at 8/s on two copies (hysteresis); never to 0.
    assert counts == [1, 2, 3, 3, 3, 2, 2, 2, 1, 1]
    assert placer.reconciler.scaler.ups == 2 and placer.reconciler.scaler.downs == 2


async def test_min_copies_are_kept_ready_on_distinct_backends(
    placer: Placer, clock: FakeClock, backends: dict[str, FakeBackend]
) -> None:
    await placer.reconciler.ensure_min_copies()
    first = holding(backends, "kept")
    assert len(first) == 2 and sorted(placer.view.ready_backends("kept")) == first
    # A backend loses its copy (restart): reconciliation notices and loads one elsewhere.
    backends[first[0]].held.discard("kept")
    await placer.reconciler.reconcile()
    assert len(holding(backends, "kept")) == 2
    assert sorted(placer.view.ready_backends("kept")) == holding(backends, "kept")
    # Cooling down never takes a model below its min_copies.
    for requests in (0, 400, 0, 0, 0, 0):
        await one_round(placer, clock, "kept", requests)
    assert len(holding(backends, "kept")) == 2 and placer.reconciler.scaler.downs == 1


def test_the_decision_has_hysteresis(placer: Placer) -> None:
    scaler = placer.reconciler.scaler
    spec = ModelSpec.parse("m", {"runtime": "triton", "max_copies": 4})
    assert scaler.decide(spec, 31.0, 3) == 1  # 10.3/s per copy
    assert scaler.decide(spec, 30.0, 3) == 0  # 10/s: not over the line
    assert scaler.decide(spec, 11.0, 3) == 0  # 5.5/s on 2 copies would still be over 5/s
    assert [scaler.decide(spec, 9.0, 3) for _ in range(3)] == [0, -1, 0]  # 4.5/s on 2: two rounds, then down
    assert scaler.decide(spec, 0.0, 0) == 0  # no copy: loading one is the cold path's business
    assert scaler.decide(ModelSpec.parse("m", {"runtime": "triton", "max_copies": 2}), 100.0, 3) == -1
