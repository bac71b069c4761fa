"""Rollouts against a real Redis: counts summed over gateways, versioned writes, one leader, and a rollout that
goes on in a new process object (a restarted gateway). The clock is a FakeClock; ticks are called, not waited."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from placement.clock import FakeClock
from placement.errors import BadReference, Conflict, InvalidSpec, NotFound
from placement.records import ModelSpec, RouteSpec
from placement.rollouts import Rollouts
from placement.route_stats import Disagreement, RouteStats
from placement.store import RedisStore
from placement.view import PlacementView


async def setup(client: aioredis.Redis, prefix: str) -> RedisStore:
    store = RedisStore(client, prefix)
    for name, runtime in (("a", "triton"), ("b", "triton"), ("tf", "tfserving")):
        await store.put_model(ModelSpec.parse(name, {"runtime": runtime}))
    assert await store.put_route(RouteSpec.parse("r", {"splits": [{"model": "a", "weight": 1}]})) == "ok"
    return store


def gateway(store: RedisStore, clock: FakeClock) -> tuple[Rollouts, RouteStats]:
    stats = RouteStats()
    return Rollouts(store, PlacementView(), stats, clock), stats


async def test_a_rollout_is_driven_by_one_leader_from_every_gateways_counts_and_survives_a_restart(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store, clock = await setup(redis_client, prefix), FakeClock()
    (g1, s1), (g2, s2) = gateway(store, clock), gateway(store, clock)
    body = {"model": "b", "steps": [50, 100], "step_seconds": 10, "min_requests": 4}
    state = await g1.start_rollout("r", body)
    assert (state["phase"], state["weight"]) == ("step", 50)
    assert [(s.model, s.weight) for s in g1.view.routes["r"].splits] == [("a", 50), ("b", 50)]
    with pytest.raises(Conflict):
        await g2.start_rollout("r", body)
    for stats in (s1, s2):  # each gateway saw 2 candidate requests: only the sum reaches min_requests
        for _ in range(2):
            stats.record("r", "b", False, 0.01)
            stats.record("r", "a", False, 0.01)
    await g1.flush()
    await g1.tick()
    await g2.tick()
    assert (await g1.status("r"))["steps"][-1]["candidate"]["requests"] == 2
    await g2.flush()
    clock.advance(10)
    await g2.tick()  # not the leader: nothing changes
    assert (await store.rollout_get("r"))["weight"] == 50  # type: ignore[index]
    # g1 "restarts": a new object with no lease; once the old lease is gone, it (or g2) goes on from Redis.
    g1, _ = gateway(store, clock)
    await redis_client.delete(store.k_lease("__rollout__"))
    await g1.tick()
    state = await g1.status("r")
    assert (state["phase"], state["weight"]) == ("step", 100)
    assert state["steps"][0]["candidate"]["requests"] == 4 and state["steps"][0]["result"] == "passed"
    for _ in range(4):
        s1.record("r", "b", False, 0.01)
    await g2.flush()
    await g2.flush()  # nothing new: no write
    assert (await g1.status("r"))["steps"][-1]["candidate"]["requests"] == 0  # s1 was not flushed
    s1_old = Rollouts(store, PlacementView(), s1, clock)
    await s1_old.flush()
    clock.advance(10)
    await g1.tick()
    assert (await g1.status("r"))["phase"] == "promoted"
    assert [(s.model, s.weight) for s in (await store.get_route("r")).splits] == [("b", 100)]  # type: ignore[union-attr]
    assert g1.states["r"]["phase"] == "promoted"


async def test_admin_checks_and_stale_writes(redis_client: aioredis.Redis, prefix: str) -> None:
    store, clock = await setup(redis_client, prefix), FakeClock()
    g, _ = gateway(store, clock)
    with pytest.raises(BadReference):
        await g.start_rollout("r", {"model": "nope"})
    with pytest.raises(BadReference):
        await g.start_rollout("r", {"model": "tf"})
    with pytest.raises(BadReference):
        await g.start_rollout("r", {"model": "a"})  # the only model already: nothing to take traffic from
    with pytest.raises(NotFound):
        await g.start_rollout("nope", {"model": "b"})
    with pytest.raises(NotFound):
        await g.status("r")
    with pytest.raises(InvalidSpec):
        await g.start_rollout("r", {"steps": [1]})
    state = await g.start_rollout("r", {"model": "b"})
    stored = await store.rollout_get("r")
    assert stored is not None and stored["version"] == 0 and state["weight"] == 1
    assert await store.rollout_write("r", 7, stored, None) == "conflict"  # a stale leader can't write
    aborted = await g.finish("r", "aborted")
    assert aborted["phase"] == "aborted"
    assert await store.get_route("r") == RouteSpec.parse("r", {"splits": [{"model": "a", "weight": 1}]})
    with pytest.raises(Conflict):
        await g.finish("r", "promoted")
    assert (await g.start_rollout("r", {"model": "b"}))["phase"] == "step"  # a new one after the end


async def test_shadow_counts_and_disagreements_sum_over_gateways(redis_client: aioredis.Redis, prefix: str) -> None:
    store, clock = await setup(redis_client, prefix), FakeClock()
    await store.put_route(RouteSpec.parse("r", {"splits": [{"model": "a", "weight": 1}], "shadows": [{"model": "b"}]}))
    for i in range(2):
        g, stats = gateway(store, clock)
        for n in range(15):
            stats.record_shadow("r", "b", "sent")
            stats.record_shadow("r", "b", "agree" if n < 5 else "disagree", 0.010, 0.030)
            if n >= 5:
                stats.disagreement(Disagreement("r", "b", f"g{i}-{n}", "p", "s", clock.now()))
        stats.record_shadow("r", "b", "dropped")
        await g.flush()
    report = (await g.shadow_report("r"))["shadows"]
    assert len(report) == 1
    b = report[0]
    assert (b["sent"], b["agree"], b["disagree"], b["failed"], b["dropped"]) == (30, 10, 20, 0, 2)
    assert b["agreement"] == pytest.approx(1 / 3)
    assert b["latency_ms"]["shadow"]["p99"] > 2 * b["latency_ms"]["primary"]["p99"]
    ids = [d["request_id"] for d in b["recent_disagreements"]]
    assert len(ids) == 20 and ids[0] == "g1-14"  # capped, newest first


async def test_a_deleted_route_ends_its_rollout_and_is_not_brought_back(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store, clock = await setup(redis_client, prefix), FakeClock()
    g, stats = gateway(store, clock)
    await g.start_rollout("r", {"model": "b", "steps": [50, 100], "step_seconds": 1, "min_requests": 1})
    assert await store.delete_route("r")
    stats.record("r", "b", False, 0.01)
    await g.flush()
    clock.advance(1)
    await g.tick()
    assert await store.get_route("r") is None
    state = await g.status("r")
    assert (state["phase"], state["reason"]) == ("aborted", "the route was deleted")
