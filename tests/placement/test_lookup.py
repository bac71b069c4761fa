"""Names unknown to a gateway's view are looked up in Redis before a 404, with bounded negative answers
(placement/lookup.py). Real Redis; time from a FakeClock, so the negative cache's expiry and the lookup budget
are tested without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from placement.clock import FakeClock
from placement.errors import StoreUnavailable
from placement.lookup import NameLookup
from placement.records import ModelSpec, RouteSpec
from placement.redis_health import RedisHealth
from placement.store import RedisStore
from placement.view import PlacementView


@pytest.fixture
async def store(redis_client: aioredis.Redis, prefix: str) -> AsyncIterator[RedisStore]:
    yield RedisStore(redis_client, prefix)


def make(store: RedisStore, clock: FakeClock, **kw: float) -> NameLookup:
    health = RedisHealth(clock)
    health.mark_up()
    return NameLookup(store, PlacementView(), health, clock, **kw)  # type: ignore[arg-type]


def reads(store: RedisStore) -> int:
    return store.calls.get("read", 0)


async def test_a_name_created_elsewhere_is_found_and_put_in_the_view(store: RedisStore) -> None:
    clock = FakeClock()
    lookup = make(store, clock)
    await store.put_model(ModelSpec.parse("a", {"runtime": "triton"}))
    await store.put_model(ModelSpec.parse("b", {"runtime": "triton"}))
    assert await store.put_route(RouteSpec.parse("r", {"splits": [{"model": "b", "weight": 1}]})) == "ok"
    assert await lookup.find("a") and "a" in lookup.view.models
    assert await lookup.find("r") and "r" in lookup.view.routes and "b" in lookup.view.models  # with its models
    before = reads(store)
    assert await lookup.find("a")  # now known: no Redis call
    assert reads(store) == before and lookup.counts.found == 2


async def test_unknown_names_are_remembered_briefly_and_forgotten_on_their_event(store: RedisStore) -> None:
    clock = FakeClock()
    lookup = make(store, clock, negative_ttl=2.0, recheck_rate=0.0, recheck_burst=0.0)
    assert not await lookup.find("x")
    before = reads(store)
    assert not await lookup.find("x")  # remembered: no Redis call
    assert reads(store) == before and lookup.counts.cached == 1
    clock.advance(2.1)
    assert not await lookup.find("x")  # expired: asked again
    assert reads(store) > before
    # Created meanwhile: the event for the name drops the remembered answer, so the next call finds it.
    await store.put_model(ModelSpec.parse("x", {"runtime": "triton"}))
    lookup.forget("x")
    assert await lookup.find("x")


async def test_a_create_racing_a_lookup_is_not_hidden(store: RedisStore) -> None:
    """The lookup reads 'unknown', the name is created and its event arrives before the lookup returns: the
    'unknown' is not remembered."""
    lookup = make(store, FakeClock())
    task = asyncio.ensure_future(lookup.find("late"))
    await asyncio.sleep(0)  # the lookup has started and is waiting for Redis
    lookup.forget("late")  # the create's event
    assert not await task
    await store.put_model(ModelSpec.parse("late", {"runtime": "triton"}))
    assert await lookup.find("late")


async def test_a_name_created_just_after_an_unknown_answer_is_found_before_its_event(store: RedisStore) -> None:
    """Gateway B answered 'unknown', then the name is created through gateway A and called on B at once, before
    its event reached B: a re-check finds it. A flood of the same unknown name spends the re-check budget and is
    then answered from memory, without Redis."""
    clock = FakeClock()
    lookup = make(store, clock, recheck_rate=1.0, recheck_burst=2.0)
    assert not await lookup.find("fresh")
    await store.put_model(ModelSpec.parse("fresh", {"runtime": "triton"}))
    assert await lookup.find("fresh")  # no event: found by a re-check
    assert not await lookup.find("ghost")
    assert not await lookup.find("ghost")  # re-checked: the last token of the budget of 2 ("fresh" took one)
    before, cached = reads(store), lookup.counts.cached
    for _ in range(50):
        assert not await lookup.find("ghost")
    assert reads(store) == before and lookup.counts.cached == cached + 50
    clock.advance(1.0)
    assert not await lookup.find("ghost")  # a re-check token came back: asked again
    assert reads(store) > before


async def test_concurrent_lookups_of_one_name_share_one_read(store: RedisStore) -> None:
    lookup = make(store, FakeClock())
    before = reads(store)
    assert await asyncio.gather(*(lookup.find("same") for _ in range(20))) == [False] * 20
    assert reads(store) - before == 2  # one model read and one route read
    assert lookup.counts.joined == 19 and lookup.counts.unknown == 1


async def test_remembered_names_are_bounded(store: RedisStore) -> None:
    lookup = make(store, FakeClock(), max_negative=3, recheck_rate=0.0, recheck_burst=0.0)
    for i in range(5):
        assert not await lookup.find(f"n{i}")
    before = reads(store)
    for i in (2, 3, 4):
        assert not await lookup.find(f"n{i}")  # the newest three are remembered
    assert reads(store) == before
    assert not await lookup.find("n0")  # the oldest was forgotten: asked again
    assert reads(store) > before


async def test_lookups_are_held_to_a_rate_budget(store: RedisStore) -> None:
    clock = FakeClock()
    lookup = make(store, clock, rate=1.0, burst=2.0)
    assert not await lookup.find("u1") and not await lookup.find("u2")
    before = reads(store)
    assert not await lookup.find("u3")  # over the budget: not looked up
    assert reads(store) == before and lookup.counts.refused == 1
    await store.put_model(ModelSpec.parse("u4", {"runtime": "triton"}))
    clock.advance(1.0)
    assert await lookup.find("u4")  # a token came back


async def test_while_redis_is_down_an_unknown_name_is_unavailable_not_unknown(store: RedisStore) -> None:
    clock = FakeClock()
    lookup = make(store, clock)
    lookup.health.mark_down("test")
    before = reads(store)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await lookup.find("anything")
    assert reads(store) == before
