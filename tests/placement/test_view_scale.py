"""What keeps a gateway's background work and admin reads from growing with the registry (issue 12, item 5):
the resync re-reads the models only when their mark moved, a burst of events is read in one pipeline per chunk,
the reconcile leader walks only the models that ask for copies, and a page of models costs two round trips.
Real Redis, fake backends."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from placement.records import ModelSpec, RouteSpec
from placement.registry import Registry
from placement.store import RedisStore
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register


def triton(name: str, **kw: object) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton", **kw})


async def test_a_resync_reads_the_models_only_when_a_write_or_their_count_moved_their_mark(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b = await make_placer(), await make_placer()
    await register(a, backends, {"b1": 2}, [triton("m1"), triton("m2")])
    await b.sync.resync()
    held = b.view.models
    await b.sync.resync()  # nothing written since: the models are not read again
    assert b.view.models is held and sorted(held) == ["m1", "m2"]
    assert b.view.versions["model:m1"] > 0  # their versions are kept for a rebuild

    # A write whose event b never gets (pub/sub is at-most-once) moves the counter: the next resync reads it.
    quiet = RedisStore(a.store.r, prefix)
    quiet.events = f"{prefix}:nobody-listens"
    await quiet.put_model(triton("m3", min_copies=1))
    await b.sync.resync()
    assert sorted(b.view.models) == ["m1", "m2", "m3"] and b.view.replicated == {"m3"}
    await quiet.delete_model("m3")
    await b.sync.resync()
    assert sorted(b.view.models) == ["m1", "m2"] and b.view.replicated == set()

    # A record that changed in Redis with no write through modelyard (nor a changed count) is caught by the
    # full read every `full_every` resyncs.
    b.sync.full_every = 3
    await redis_client.hset(f"{prefix}:model:m2", "spec", json.dumps(triton("m2", max_copies=2).to_json()))
    for _ in range(3):
        await b.sync.resync()
    assert b.view.models["m2"].max_copies == 2 and b.view.replicated == {"m2"}


async def test_a_burst_of_events_is_applied_with_one_read_per_chunk_of_names(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    a, b = await make_placer(), await make_placer()
    await register(a, backends, {"b1": 2}, [triton("m0")])
    await b.sync.stop()  # b is given the events below by hand, and only those
    names = [f"s{i:04d}" for i in range(1200)]
    await a.store.put_models([triton(n, max_copies=2 if n == "s0007" else 1) for n in names])
    await a.store.put_route(RouteSpec.parse("r", {"splits": [{"model": "s0001", "weight": 1}]}))
    forgotten: list[str | None] = []
    b.sync.on_name = forgotten.append
    reads = b.store.calls.get("read", 0)
    events = [{"t": "model", "m": n} for n in [*names, "gone"]] + [{"t": "route", "r": "r"}]
    await b.sync._apply_all(events)
    # 1201 models in chunks of 500 (3 reads) and the route (1 read), not 1202 round trips
    assert b.store.calls["read"] - reads == 4
    assert all(b.view.models[n] == triton(n, max_copies=2 if n == "s0007" else 1) for n in names)
    assert "gone" not in b.view.models and b.view.routes["r"].models == ["s0001"]
    assert b.view.replicated == {"s0007"}
    assert forgotten == [*names, "gone", "r"]  # each name's cached lookups are dropped, as one by one


async def test_the_reconcile_round_walks_only_models_that_ask_for_copies(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    a = await make_placer()
    plain = [triton(f"p{i}") for i in range(50)]
    await register(a, backends, {"b1": 4, "b2": 4}, [*plain, triton("kept", min_copies=2, max_copies=2)])
    assert a.view.replicated == {"kept"}
    await a.reconciler.reconcile()
    assert sorted(a.view.ready_backends("kept")) == ["b1", "b2"]
    assert all(not a.view.ready_backends(p.name) for p in plain)  # nothing else was loaded
    a.view.set_model("kept", triton("kept"))  # back to the defaults: out of the index
    assert a.view.replicated == set()


async def test_a_page_of_models_has_every_field_of_each_status(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    a = await make_placer()
    await register(a, backends, {"b1": 2, "b2": 2}, [triton("a"), triton("b", min_copies=2, max_copies=2)])
    await a.store.put_models([triton(f"z{i}") for i in range(3)])
    await a.loader.ensure_copies("b", 2)
    await a.ensure("a")
    await a.store.touch_many([("b", "b1", 2e9)], {"b": 1}, {"b": 2e9})  # one request to b, finished at 2e9
    registry = Registry(a)
    page = await registry.list_models(2, None)
    assert [m["name"] for m in page["models"]] == ["a", "b"] and page["next_cursor"] == "b"
    by_name = {m["name"]: m for m in page["models"]}
    assert [c["backend"] for c in by_name["b"]["copies"]] == ["b1", "b2"]
    assert by_name["b"]["last_used"] == 2e9 and by_name["a"]["last_used"] is None
    assert all(c["state"] == "ready" for m in page["models"] for c in m["copies"])
    assert by_name["a"] == (await a.store.model_status("a")).to_json()  # type: ignore[union-attr]
    rest = await registry.list_models(1000, page["next_cursor"])
    assert [m["name"] for m in rest["models"]] == ["z0", "z1", "z2"] and rest["next_cursor"] is None
    assert all(m["copies"] == [] for m in rest["models"])
    placement = await registry.placement()
    assert {bid: sorted(m["name"] for m in p["models"]) for bid, p in placement["backends"].items()} == {
        "b1": sorted(["b", *(["a"] if "b1" in a.view.ready_backends("a") else [])]),
        "b2": sorted(["b", *(["a"] if "b2" in a.view.ready_backends("a") else [])]),
    }
    b1 = {m["name"]: m for m in placement["backends"]["b1"]["models"]}
    assert b1["b"]["last_used"] == 2e9
