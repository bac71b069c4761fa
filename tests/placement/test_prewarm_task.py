"""Pre-warming in the gateway on a real Redis with fake backends and a fake clock: the leader loads a model with a
regular gap before its next request, a pre-warm never evicts a busy copy nor delays a demand load, models whose
pre-warms keep missing are given up, and with two gateways only the leader pre-warms."""

from __future__ import annotations

import asyncio
import math

import pytest

from placement.clock import FakeClock
from placement.placer import Placer
from placement.prewarm import Prewarmer
from placement.prewarm_task import PrewarmTask
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register
from tests.placement.test_loader import triton
from tests.waiting import eventually_async as wait_for

GAP = 10.0


async def serve(placer: Placer, clock: FakeClock, model: str) -> None:
    """One request for `model` through `placer` (loading it on demand), flushed to Redis as usage."""
    backend = await placer.ensure(model)
    placer.usage.start(model, backend)
    clock.advance(0.01)  # the request takes a moment after the load committed
    placer.usage.finish(model, backend)
    await placer.store.touch_many(*placer.usage.drain_all())


async def regular(placer: Placer, clock: FakeClock, model: str, times: int) -> None:
    """`times` requests for `model`, GAP seconds apart; then its copy is unloaded (as if evicted)."""
    for i in range(times):
        if i:
            clock.advance(GAP)
        await serve(placer, clock, model)
    for bid in placer.view.ready_backends(model):
        assert await placer.loader.unload_copy(model, bid, reason="admin")


def task_of(placer: Placer, clock: FakeClock, results: list[tuple[str, str]], **kw: int) -> PrewarmTask:
    task = PrewarmTask(placer.store, placer.view, placer.loader, placer.settings, clock, Prewarmer(**kw))
    task.on_result = lambda model, result: results.append((model, result))
    return task


async def tick(task: PrewarmTask) -> None:
    await task.tick()
    await task.wait_idle()


async def test_a_model_with_a_regular_gap_is_loaded_before_its_next_request_and_counted_used(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 2}, [triton("timer"), triton("other")])
    await regular(placer, clock, "timer", 4)  # last request at t0 + 30; next expected at t0 + 40
    results: list[tuple[str, str]] = []
    task = task_of(placer, clock, results)
    clock.advance(5)
    await tick(task)
    assert "timer" not in backends["b1"].held and results == []  # not due yet (due lead + load time before)
    clock.advance(4)
    await tick(task)
    assert task.leader and "timer" in backends["b1"].held and results == [("timer", "loaded")]
    loads = list(backends["b1"].loads)
    clock.advance(1)
    await serve(placer, clock, "timer")  # the request finds the copy ready: no load
    assert backends["b1"].loads == loads
    # Loads are no requests: the learned gap says 10 s, not the moment between a load and its first request,
    # nor the 1 s since the pre-warm's commit.
    assert (await placer.store.prewarm_facts())["timer"][1] == pytest.approx(GAP, abs=0.02)
    await tick(task)
    assert results == [("timer", "loaded"), ("timer", "used")]
    assert task.prewarmer.stats.used == 1
    await tick(task)  # nothing further is due until the next gap
    assert results == [("timer", "loaded"), ("timer", "used")]


async def test_a_prewarm_evicts_only_an_idle_copy_worth_less_never_one_in_flight(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    other = await make_placer(eviction_policy="nextuse")  # a second gateway sharing the Redis
    await register(placer, backends, {"b1": 1}, [triton("timer"), triton("busy")])
    await other.sync.resync()
    await regular(placer, clock, "timer", 3)
    await serve(placer, clock, "busy")
    clock.advance(60)  # busy is long idle here...
    loader = placer.loader
    placer.usage.start("busy", "b1")  # ...but a request is in flight on this gateway
    assert await loader.prewarm("timer", math.inf, 1.5) is None
    placer.usage.finish("busy", "b1")
    placer.usage.drain()  # not flushed: Redis still has busy idle since 60 s ago
    other.usage.start("busy", "b1")  # in flight on the other gateway: its flush refreshes the last use
    await other.store.touch_many(*other.usage.drain_all())
    assert await loader.prewarm("timer", math.inf, 1.5) is None
    assert backends["b1"].held == {"busy"} and backends["b1"].unloads == ["timer"]
    other.usage.finish("busy", "b1")
    clock.advance(5)
    # Idle now; still kept from a pre-warm worth less than it.
    assert await loader.prewarm("timer", 0.0, 1.5) is None
    assert backends["b1"].held == {"busy"}
    # Worth more than the idle copy: the pre-warm evicts it.
    assert await loader.prewarm("timer", math.inf, 1.5) == "b1"
    assert backends["b1"].held == {"timer"} and backends["b1"].unloads == ["timer", "busy"]
    assert backends["b1"].max_held == 1


async def test_a_prewarm_never_delays_a_demand_load(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    other = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 3}, [triton("timer"), triton("cold"), triton("cold2")])
    await other.sync.resync()
    await regular(placer, clock, "timer", 3)
    results: list[tuple[str, str]] = []
    task = task_of(placer, clock, results)
    clock.advance(GAP - 1)  # timer is due
    gate = backends["b1"].gate = asyncio.Event()
    # A demand load under way on this gateway: the pre-warm stands aside, in the loader and in the task.
    demand = asyncio.create_task(placer.ensure("cold"))
    await wait_for(placer.loader.loading)
    assert await placer.loader.prewarm("timer", math.inf, 1.5) is None
    await tick(task)
    assert results == [] and backends["b1"].loads.count("timer") == 1
    gate.set()
    await demand
    # A demand load under way on another gateway (its copy is loading in the view): the pre-warm waits too.
    gate = backends["b1"].gate = asyncio.Event()
    demand = asyncio.create_task(other.ensure("cold2"))
    await wait_for(lambda: "cold2" in placer.view.copies)
    await tick(task)
    assert results == [] and backends["b1"].loads.count("timer") == 1
    gate.set()
    await demand
    # Nothing under way: timer is pre-warmed; a request for it meanwhile joins that load (one load).
    backends["b1"].gate = gate = asyncio.Event()
    await task.tick()
    await wait_for(placer.loader.loading)
    joined = placer.loader.events.joined
    request = asyncio.create_task(placer.ensure("timer"))
    gate.set()
    assert await request == "b1"
    await task.wait_idle()
    assert placer.loader.events.joined == joined + 1
    assert backends["b1"].loads.count("timer") == 2 and results == [("timer", "loaded")]


async def test_a_demand_request_that_joined_a_prewarm_which_stood_aside_loads_on_demand(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 1}, [triton("timer"), triton("held")])
    await serve(placer, clock, "held")
    clock.advance(60)
    # Worth nothing, the pre-warm will stand aside. Tasks start in order: the pre-warm registers its load
    # before the request looks, so the request joins it, then loads on demand.
    prewarm = asyncio.create_task(placer.loader.prewarm("timer", 0.0, 1.5))
    request = asyncio.create_task(placer.ensure("timer"))
    assert await prewarm is None
    assert await request == "b1"
    assert placer.loader.events.joined == 1
    assert backends["b1"].held == {"timer"} and backends["b1"].unloads == ["held"]


async def test_a_model_whose_prewarms_keep_missing_is_given_up(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 2}, [triton("flaky")])
    await regular(placer, clock, "flaky", 3)
    results: list[tuple[str, str]] = []
    task = task_of(placer, clock, results, max_misses=2)
    for _ in range(2):
        clock.advance(GAP - 1)
        await tick(task)
        assert "flaky" in backends["b1"].held
        # The expected request never comes; the copy is evicted unused.
        assert await placer.loader.unload_copy("flaky", "b1", reason="evicted")
        await tick(task)
        assert results[-1][1] in ("wasted", "given_up")
        clock.advance(1)
        await serve(placer, clock, "flaky")  # it comes after the copy went: a demand load
        assert await placer.loader.unload_copy("flaky", "b1", reason="evicted")
    assert results == [
        ("flaky", "loaded"),
        ("flaky", "wasted"),
        ("flaky", "loaded"),
        ("flaky", "wasted"),
        ("flaky", "given_up"),
    ]
    clock.advance(GAP - 1)
    await tick(task)  # due again, but given up
    assert "flaky" not in backends["b1"].held and len(results) == 5
    assert task.prewarmer.stats.given_up == 1


async def test_with_two_gateways_only_the_leader_prewarms_and_another_takes_over(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    gateways = [await make_placer(eviction_policy="nextuse") for _ in range(2)]
    await register(gateways[0], backends, {"b1": 2}, [triton("a"), triton("b")])
    await gateways[1].sync.resync()
    await regular(gateways[0], clock, "a", 3)
    results: list[list[tuple[str, str]]] = [[], []]
    tasks = [task_of(g, clock, r) for g, r in zip(gateways, results, strict=True)]
    clock.advance(GAP - 1)
    for _ in range(3):
        for t in tasks:
            await tick(t)
    assert [t.leader for t in tasks] == [True, False]
    assert results == [[("a", "loaded")], []] and backends["b1"].loads.count("a") == 2
    await tasks[0].stop()  # hands the lease back
    await regular(gateways[1], clock, "b", 3)
    clock.advance(GAP - 1)
    await tick(tasks[1])
    assert tasks[1].leader and results[1] == [("b", "loaded")]
    assert backends["b1"].loads.count("b") == 2
    await tasks[1].stop()
