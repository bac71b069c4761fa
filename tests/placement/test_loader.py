"""Placement logic on a real Redis: coalescing, capacity, LRU eviction, pinning, failures, fencing."""

from __future__ import annotations

import asyncio
import random

import pytest

from placement.clock import FakeClock
from placement.errors import LoadFailed, NoCapacity
from placement.records import CopyState, ModelSpec
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register


def triton(name: str, **kw: object) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton", **kw})


async def test_concurrent_requests_for_a_cold_model_cause_one_load(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    placer = await make_placer()
    await register(placer, backends, {"b1": 2, "b2": 2}, [triton("m")])
    backends["b1"].load_delay = backends["b2"].load_delay = 0.2
    results = await asyncio.gather(*(placer.ensure("m") for _ in range(50)))
    assert len(set(results)) == 1
    assert backends["b1"].loads + backends["b2"].loads == ["m"]
    status = await placer.store.model_status("m")
    assert status is not None and status.loads == 1


async def test_three_gateways_sharing_redis_load_a_cold_model_once(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    gateways = [await make_placer() for _ in range(3)]
    await register(gateways[0], backends, {"b1": 2, "b2": 2}, [triton("m")])
    for g in gateways[1:]:
        await g.sync.resync()
    backends["b1"].load_delay = backends["b2"].load_delay = 0.3
    results = await asyncio.gather(*(gateways[i % 3].ensure("m") for i in range(51)))
    assert len(set(results)) == 1
    assert backends["b1"].loads + backends["b2"].loads == ["m"]


async def test_capacity_is_never_exceeded_under_concurrent_loads(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    gateways = [await make_placer() for _ in range(2)]
    names = [f"m{i}" for i in range(12)]
    await register(gateways[0], backends, {"b1": 2, "b2": 2}, [triton(n) for n in names])
    await gateways[1].sync.resync()
    backends["b1"].load_delay = backends["b2"].load_delay = 0.01
    rng = random.Random(7)
    order = [rng.choice(names) for _ in range(60)]

    async def one(i: int, name: str) -> tuple[str, str]:
        placer = gateways[i % 2]
        backend = await placer.ensure(name)
        return name, backend

    # FakeBackend.note() asserts capacity at every load; a violation fails the load and this gather.
    for start in range(0, len(order), 6):
        answers = await asyncio.gather(*(one(i, n) for i, n in enumerate(order[start : start + 6])))
        for name, backend in answers:
            assert name in backends[backend].held or name in backends[backend].unloads
    assert max(b.max_held for b in backends.values()) <= 2
    for bid, b in backends.items():
        ready = {c.model for c in await gateways[0].store.copies_on(bid) if c.state.holds_slot}
        assert ready == b.held


async def test_eviction_takes_the_least_recently_used_idle_copy(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer()
    await register(placer, backends, {"b1": 3}, [triton(n) for n in ("a", "b", "c", "d")])
    for name in ("a", "b", "c"):
        await placer.ensure(name)
    # Use them in the order b, a, c: b is the least recently used.
    for name in ("b", "a", "c"):
        clock.advance(10)
        placer.usage.start(name, "b1")
        placer.usage.finish(name, "b1")
    await placer.ensure("d")
    assert backends["b1"].unloads == ["b"]
    assert backends["b1"].held == {"a", "c", "d"}
    # Then a is the oldest; but a request in flight on a keeps it.
    placer.usage.start("a", "b1")
    await placer.ensure("b")
    assert backends["b1"].unloads == ["b", "c"]
    placer.usage.finish("a", "b1")


async def test_pinned_and_min_copies_are_never_evicted(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer()
    models = [triton("pin", pinned=True), triton("keep", min_copies=1), triton("x"), triton("y")]
    await register(placer, backends, {"b1": 3}, models)
    for name in ("pin", "keep", "x"):
        clock.advance(1)
        await placer.ensure(name)
    clock.advance(1)
    await placer.ensure("y")  # the only evictable copy is x, although pin and keep are older
    assert backends["b1"].unloads == ["x"]
    assert backends["b1"].held == {"pin", "keep", "y"}


async def test_nothing_evictable_gives_no_capacity_after_the_load_timeout(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    placer = await make_placer(load_timeout=0.5)
    await register(placer, backends, {"b1": 1}, [triton("pin", pinned=True), triton("other")])
    await placer.ensure("pin")
    with pytest.raises(NoCapacity) as err:
        await placer.ensure("other")
    assert "pinned" in str(err.value) and err.value.retry_after >= 1
    assert backends["b1"].held == {"pin"}
    assert backends["b1"].loads == ["pin"]


async def test_a_failed_load_is_recorded_and_not_retried_in_a_tight_loop(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer()
    await register(placer, backends, {"b1": 2}, [triton("bad")])
    backends["b1"].fail["bad"] = "model.py raised: ValueError('weights missing')"
    with pytest.raises(LoadFailed) as first:
        await placer.ensure("bad")
    assert "weights missing" in str(first.value)
    status = await placer.store.model_status("bad")
    assert status is not None
    assert [(c.backend, c.state, c.reason) for c in status.copies] == [
        ("b1", CopyState.FAILED, "model.py raised: ValueError('weights missing')")
    ]
    assert status.last_error and "weights missing" in status.last_error
    # Asked again at once: refused from the backoff, without touching the backend.
    for _ in range(5):
        with pytest.raises(LoadFailed) as again:
            await placer.ensure("bad")
        assert "next attempt" in str(again.value)
    assert backends["b1"].loads == ["bad"]
    # After the backoff, one more attempt; the delay doubles.
    clock.advance(1.5)
    with pytest.raises(LoadFailed):
        await placer.ensure("bad")
    assert backends["b1"].loads == ["bad", "bad"]
    status = await placer.store.model_status("bad")
    assert status is not None and status.retry_at == pytest.approx(clock.now() + 2.0)
    # Once fixed, the model loads and the failure is cleared.
    del backends["b1"].fail["bad"]
    clock.advance(2.5)
    assert await placer.ensure("bad") == "b1"
    status = await placer.store.model_status("bad")
    assert status is not None and status.last_error is None and status.failures == 0


async def test_a_holder_that_lost_its_lease_cannot_commit(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer()
    await register(placer, backends, {"b1": 2}, [triton("m")])
    store = placer.store
    token = await store.lease_try("m", 10_000)
    assert token is not None
    assert await store.reserve("b1", "m", 0, token, clock.now()) == "ok"
    # The lease expires and another gateway takes it (simulated: its key now holds a newer token).
    await store.r.delete(store.k_lease("m"))
    newer = await store.lease_try("m", 10_000)
    assert newer is not None and newer > token
    assert await store.commit("b1", "m", token, clock.now()) == "fenced"
    assert await store.fail("b1", "m", token, clock.now(), "x", 1, 60) == "fenced"
    assert not await store.lease_renew("m", token, 10_000)
    # The new holder adopts the abandoned reservation and commits it.
    assert await store.adopt("b1", "m", newer) == "ok"
    assert await store.commit("b1", "m", newer, clock.now()) == "ok"
    assert [(c.state, c.token) for c in await store.copies_of("m")] == [(CopyState.READY, newer)]


async def test_reserve_takes_each_slot_once_under_a_race(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer()
    await register(placer, backends, {"b1": 3}, [])
    results = await asyncio.gather(*(placer.store.reserve("b1", f"m{i}", 0, i + 1, clock.now()) for i in range(40)))
    assert results.count("ok") == 3 and results.count("full") == 37


async def test_bytes_capacity_is_respected(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer()
    backends["b1"] = FakeBackend("b1", 10)
    from placement.records import BackendSpec

    await placer.store.put_backend(
        BackendSpec.parse(
            "b1", {"kind": "triton", "url": "http://127.0.0.1:1", "capacity": {"models": 10, "memory_bytes": 100}}
        )
    )
    for name in ("a", "b", "c"):
        await placer.store.put_model(triton(name, memory_bytes=60))
    await placer.sync.resync()
    await placer.ensure("a")
    clock.advance(1)
    await placer.ensure("b")  # 60 + 60 > 100: a must go first
    assert backends["b1"].held == {"b"} and backends["b1"].unloads == ["a"]


async def test_a_restarted_gateway_serves_warm_models_without_reloading(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    first = await make_placer()
    await register(first, backends, {"b1": 2}, [triton("m")])
    await first.ensure("m")
    second = await make_placer()  # a new process on the same Redis
    assert second.warm_backend("m") == "b1"
    assert await second.ensure("m") == "b1"
    assert backends["b1"].loads == ["m"]


async def test_loads_finish_when_they_end_while_a_lease_renewal_is_in_flight(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    """Regression: ending the renew task by cancel alone could be swallowed by redis-py mid-EVALSHA, leaving
    the load task (and every request joining it) waiting forever. Loads here last about one renew period,
    so a renewal is often in flight when the load ends."""
    ttl = 0.15
    placer = await make_placer(lease_ttl=ttl)
    names = [f"m{i}" for i in range(120)]
    await register(placer, backends, {"b1": 1000}, [triton(n) for n in names])
    rng = random.Random(3)
    for name in names:
        backends["b1"].load_delay = ttl / 3 * rng.uniform(0.9, 1.1)
        await asyncio.wait_for(placer.ensure(name), 5)
        assert await placer.store.lease_holder(name) is None
