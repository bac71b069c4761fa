"""Redis losing its data, on a real Redis with fake backends: the registry is re-seeded from the gateways'
views (deletes included), copies are adopted from what the backends hold, and nothing is loaded again."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from placement.placer import Placer
from placement.records import CopyState, ModelSpec, RouteSpec
from tests.fakes import FakeAdapter, FakeBackend
from tests.placement.conftest import MakePlacer, register


def triton(name: str, **kw: object) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton", **kw})


async def wipe(client: aioredis.Redis, prefix: str) -> None:
    """What a Redis restarted without persistence looks like to one deployment: none of its keys."""
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)


async def rebuilt(placer: Placer) -> None:
    """Notice the loss as a resync would, and wait for this gateway's rebuild to end."""
    await placer.sync.resync()
    await placer.reconciler.rebuilder.trigger()


async def test_a_wiped_redis_is_rebuilt_from_the_views_and_the_backends_without_reloads(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b = await make_placer(), await make_placer()
    await register(a, backends, {"b1": 2, "b2": 2}, [triton("m1"), triton("m2"), triton("m3", min_copies=0)])
    await a.store.put_route(RouteSpec.parse("r", {"splits": [{"model": "m1", "weight": 1}]}))
    await a.sync.resync()
    await b.sync.resync()
    where = {m: await a.ensure(m) for m in ("m1", "m2", "m3")}
    await b.sync.resync()
    loads_before = {bid: list(fb.loads) for bid, fb in backends.items()}
    generation = a.view.generation
    assert generation is not None

    await wipe(redis_client, prefix)
    await a.sync.resync()  # the loss is noticed; the view keeps serving what it had meanwhile
    assert {m: a.warm_backend(m) for m in where} == where
    assert sorted(a.view.models) == ["m1", "m2", "m3"] and "r" in a.view.routes
    await a.reconciler.rebuilder.trigger()
    await rebuilt(b)  # a second gateway rebuilding too changes nothing: every step is idempotent

    snap = await a.store.snapshot()
    assert snap.generation is not None and snap.generation != generation
    assert a.view.generation == b.view.generation == snap.generation
    assert sorted(snap.backends) == ["b1", "b2"]
    assert sorted(snap.models) == ["m1", "m2", "m3"] and snap.models["m3"] == triton("m3", min_copies=0)
    assert snap.routes["r"].models == ["m1"]
    copies = {m: {bid: c.state for bid, c in held.items()} for m, held in snap.copies.items()}
    assert copies == {m: {bid: CopyState.READY} for m, bid in where.items()}
    assert {bid: list(fb.loads) for bid, fb in backends.items()} == loads_before
    assert all(not fb.unloads for fb in backends.values())
    for m, bid in where.items():  # served warm from the rebuilt placement, by both gateways
        assert a.warm_backend(m) == b.warm_backend(m) == bid
    assert await a.ensure("m1") == where["m1"]
    assert {bid: list(fb.loads) for bid, fb in backends.items()} == loads_before


@pytest.mark.parametrize("stale_first", [True, False])
async def test_a_stale_view_cannot_resurrect_a_deleted_model_whichever_gateway_rebuilds_first(
    make_placer: MakePlacer,
    backends: dict[str, FakeBackend],
    redis_client: aioredis.Redis,
    prefix: str,
    stale_first: bool,
) -> None:
    a, b = await make_placer(), await make_placer()
    await register(a, backends, {"b1": 2}, [triton("keep"), triton("gone")])
    await b.sync.resync()
    stale = b.view.models["gone"]
    stale_version = b.view.versions["model:gone"]
    # Deleted through a (its view keeps the tombstone); b missed it (its event lost, then Redis lost its data).
    await a.store.delete_model("gone")
    await a.sync.resync()
    assert "gone" not in a.view.models and a.view.tombstones["model:gone"] >= stale_version
    b.view.models["gone"] = stale

    await wipe(redis_client, prefix)
    for g in (b, a) if stale_first else (a, b):
        await rebuilt(g)
    assert sorted((await a.store.snapshot()).models) == ["keep"]
    await b.sync.resync()
    assert sorted(b.view.models) == ["keep"]


async def test_a_flush_without_a_reconnection_is_noticed_by_the_generation_check(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], redis_client: aioredis.Redis, prefix: str
) -> None:
    a = await make_placer()
    await register(a, backends, {"b1": 2}, [triton("m")])
    bid = await a.ensure("m")
    await wipe(redis_client, prefix)
    await a.reconciler.check_health()  # the periodic health round looks at the generation key
    task = a.reconciler.rebuilder._task
    assert task is not None
    await task
    assert (await a.store.copies_of("m"))[0].state is CopyState.READY
    assert backends[bid].loads == ["m"]


async def test_a_new_redis_adopts_what_the_backends_hold_and_unloads_what_does_not_fit(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    a = await make_placer()
    await register(a, backends, {"b1": 2}, [triton("x"), triton("y"), triton("z")])
    backends["b1"].held = {"x", "y", "z", "unknown"}  # left by a gateway whose Redis was not this one
    await a.reconciler.rebuilder.adopt_backend("b1")
    held = {c.model: c.state for c in await a.store.copies_on("b1")}
    assert held == {"x": CopyState.READY, "y": CopyState.READY}  # in name order, up to capacity 2
    assert sorted(backends["b1"].unloads) == ["unknown", "z"]
    assert backends["b1"].held == {"x", "y"} and not backends["b1"].loads
    await a.reconciler.rebuilder.adopt_backend("b1")  # again: nothing changes
    assert sorted(backends["b1"].unloads) == ["unknown", "z"]


async def test_a_list_configured_backend_is_asked_about_every_registered_model_after_a_loss(
    make_placer: MakePlacer,
    backends: dict[str, FakeBackend],
    redis_client: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = await make_placer()
    await register(a, backends, {"b1": 2}, [triton("x"), triton("y")])
    bid = await a.ensure("x")
    asked: list[list[str]] = []

    async def lists_lost(self: FakeAdapter) -> set[str]:
        return set()  # like TF Serving's loaded(): its names came from lists Redis no longer has

    async def loaded_among(self: FakeAdapter, names: list[str]) -> set[str]:
        asked.append(sorted(names))
        return self.b.held & set(names)

    monkeypatch.setattr(FakeAdapter, "loaded", lists_lost)
    monkeypatch.setattr(FakeAdapter, "loaded_among", loaded_among, raising=False)
    await wipe(redis_client, prefix)
    await rebuilt(a)
    assert asked == [["x", "y"]]
    assert [(c.backend, c.state) for c in await a.store.copies_of("x")] == [(bid, CopyState.READY)]
    await a.reconciler.rebuilder.adopt_backend(bid)  # a reconcile round does not ask about every model
    assert len(asked) == 1


async def test_records_lost_under_the_same_generation_are_rebuilt(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], redis_client: aioredis.Redis, prefix: str
) -> None:
    a = await make_placer()
    await register(a, backends, {"b1": 2}, [triton("x"), triton("y")])
    await a.reconciler.rebuilder.trigger()  # the first start's (a new Redis), if it has not ended yet
    rebuilds = a.reconciler.rebuilder.rebuilds
    await a.store.delete_model("y")  # a delete leaves a tombstone: not a loss
    await a.sync.resync()
    assert a.reconciler.rebuilder.rebuilds == rebuilds and sorted(a.view.models) == ["x"]
    # A failover to a replica that was behind: the generation is there, a model is not, and no delete says why.
    await redis_client.zrem(f"{prefix}:models", "x")
    await redis_client.delete(f"{prefix}:model:x")
    await rebuilt(a)
    assert a.reconciler.rebuilder.rebuilds == rebuilds + 1
    assert sorted((await a.store.snapshot()).models) == ["x"] and sorted(a.view.models) == ["x"]
