"""The loader with the gdsf policy on a real Redis: it weighs request counts (shared through Redis, surviving
eviction) and learned load times, says why it evicted, and shows each copy's score in the placement view."""

from __future__ import annotations

import logging

import pytest

from placement.clock import FakeClock
from placement.registry import Registry
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register
from tests.placement.test_loader import triton


async def test_gdsf_evicts_the_model_seen_once_not_the_frequent_older_one(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    placer = await make_placer(eviction_policy="gdsf")
    other = await make_placer(eviction_policy="gdsf")  # a second gateway sharing the Redis
    await register(placer, backends, {"b1": 2}, [triton(n) for n in ("hot", "once", "new")])
    await placer.ensure("hot")
    await placer.ensure("once")
    for _ in range(5):  # hot's requests reach Redis through the other gateway's batched usage writes
        other.usage.start("hot", "b1")
        other.usage.finish("hot", "b1")
    await other.store.touch_many(*other.usage.drain_all())
    clock.advance(10)
    placer.usage.start("once", "b1")
    placer.usage.finish("once", "b1")  # once is the most recently used: LRU would evict hot
    clock.advance(1)
    with caplog.at_level(logging.INFO, logger="modelyard.placement"):
        await placer.ensure("new")
    assert backends["b1"].unloads == ["once"]
    evicted = [r for r in caplog.records if getattr(r, "event", None) == "eviction"]
    assert [(r.model, r.policy) for r in evicted] == [("once", "gdsf")]  # type: ignore[attr-defined]
    assert "gdsf ranked it first of 2" in evicted[0].reason  # type: ignore[attr-defined]
    # Both loads were timed and learned; the placement view shows each ready copy's score, hot above new.
    facts = await placer.store.eviction_facts(["hot", "new"])
    assert facts["hot"][0] == 5 and facts["hot"][1] >= 0.0 and "new" in facts
    view = await Registry(placer).placement()
    assert view["eviction"] == "gdsf"
    scores = {m["name"]: m["score"] for m in view["backends"]["b1"]["models"]}
    assert set(scores) == {"hot", "new"} and scores["hot"] > scores["new"]


async def test_lru_is_still_plain_lru_and_shows_last_use_as_its_score(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="lru")
    await register(placer, backends, {"b1": 2}, [triton(n) for n in ("hot", "once", "new")])
    await placer.ensure("hot")
    await placer.ensure("once")
    for _ in range(5):
        placer.usage.start("hot", "b1")
        placer.usage.finish("hot", "b1")
    clock.advance(10)
    placer.usage.start("once", "b1")
    placer.usage.finish("once", "b1")
    await placer.ensure("new")
    assert backends["b1"].unloads == ["hot"]
    view = await Registry(placer).placement()
    assert view["eviction"] == "lru"
    assert {m["name"]: m["score"] for m in view["backends"]["b1"]["models"]}["once"] == clock.now()


async def test_gaps_between_requests_are_learned_in_the_batched_usage_writes_across_gateways(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    one, two = await make_placer(eviction_policy="nextuse"), await make_placer(eviction_policy="nextuse")
    await register(one, backends, {"b1": 2}, [triton(n) for n in ("tick", "new", "third")])
    await one.ensure("tick")
    await one.ensure("new")
    for i in range(6):  # tick is called every 30 s, through either gateway
        clock.advance(30)
        g = (one, two)[i % 2]
        g.usage.start("tick", "b1")
        g.usage.finish("tick", "b1")
        await g.store.touch_many(*g.usage.drain_all())
    facts = await one.store.eviction_facts(["tick", "new"])
    assert facts["tick"][2] == pytest.approx(30.0) and facts["new"][2] == 0.0
    # The last request anywhere, which survives eviction (EvictionCandidate.last_request); 0 when never used.
    last = await two.store.last_requests(["tick", "new"])
    assert last == {"tick": clock.now(), "new": 0.0}
    clock.advance(5)
    await one.ensure("third")  # tick is due in 25 s; new, seen never since its load, predicted far off
    assert backends["b1"].unloads == ["new"]


async def test_candidates_carry_the_last_request_so_a_prewarmed_copy_is_told_from_an_idle_one(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 2}, [triton(n) for n in ("used", "ahead")])
    await placer.ensure("used")
    placer.usage.start("used", "b1")
    placer.usage.finish("used", "b1")
    await placer.store.touch_many(*placer.usage.drain_all())
    clock.advance(5)
    await placer.ensure("ahead")  # loaded with no request yet, as a pre-warm is
    copies = await placer.store.copies_on("b1")
    candidates = {c.model: c for c in await placer.loader._candidates(copies)}
    assert candidates["used"].last_request == pytest.approx(clock.now() - 5)
    assert candidates["ahead"].last_request == 0.0  # never requested anywhere


async def test_a_request_in_flight_across_a_flush_teaches_the_gap_since_the_previous_request(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 2}, [triton("tick")])
    await placer.ensure("tick")

    async def flush() -> None:
        u = placer.usage
        await placer.store.touch_many(*u.drain_all())

    for _ in range(3):  # every 30 s a request that takes 0.2 s, with a flush while it runs
        clock.advance(30)
        placer.usage.start("tick", "b1")
        await flush()
        clock.advance(0.2)
        placer.usage.finish("tick", "b1")
        await flush()
    facts = await placer.store.eviction_facts(["tick"])
    assert facts["tick"][2] == pytest.approx(30.2)  # end to end; without `finished`: 0.2, the in-flight part
