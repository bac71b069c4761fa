"""The model lists of list-configured backends (TF Serving), on a real Redis: derived from copies, one sender
at a time across gateways, and no stale record from a sender whose lease ran out."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.embedded_redis import RedisServer
from placement.records import BackendSpec, CopyState, ModelSpec
from placement.served import ServedLists
from placement.store import RedisStore
from placement.view import PlacementView


@pytest.fixture
async def store(redis_client: aioredis.Redis, prefix: str) -> RedisStore:
    s = RedisStore(redis_client, prefix)
    await s.put_backend(
        BackendSpec.parse(
            "tfs",
            {"kind": "tfserving", "url": "http://127.0.0.1:1", "grpc_url": "127.0.0.1:2", "capacity": {"models": 4}},
        )
    )
    for name, source in (("a", None), ("b", "file:///srv/b"), ("c", None), ("d", None)):
        await s.put_model(ModelSpec.parse(name, {"runtime": "tfserving", "source": source}))
    return s


async def test_wanted_is_every_loading_or_ready_copy_with_its_source(store: RedisStore) -> None:
    lists = ServedLists(store, PlacementView(), lease_ttl=5.0)
    for i, name in enumerate("abcd"):
        assert await store.reserve("tfs", name, 0, 100 + i, 1.0) == "ok"
    await store.r.set(store.k_lease("a"), 100)
    await store.r.set(store.k_lease("b"), 101)
    assert await store.commit("tfs", "a", 100, 2.0) == "ok"  # ready
    assert await store.commit("tfs", "b", 101, 2.0) == "ok"
    assert await store.begin_unload("tfs", "b", 3.0) == "ok"  # unloading: out of the list
    assert await store.begin_unload("tfs", "c", 3.0, CopyState.LOADING, 999) == "fenced"
    assert await store.begin_unload("tfs", "c", 3.0, CopyState.LOADING, 102) == "ok"  # a load given up
    assert await lists.wanted("tfs") == [("a", None), ("d", None)]
    assert await store.remove_copy("tfs", "b", CopyState.UNLOADING) == "ok"
    assert await lists.wanted("tfs") == [("a", None), ("d", None)]


async def test_one_holder_at_a_time_across_gateways(redis_server: RedisServer, store: RedisStore) -> None:
    # Two "gateways": two stores over separate connections, same prefix.
    other = aioredis.from_url(redis_server.url)
    try:
        lists = [
            ServedLists(store, PlacementView(), lease_ttl=0.6, poll=0.01),
            ServedLists(RedisStore(other, store.p), PlacementView(), lease_ttl=0.6, poll=0.01),
        ]
        inside = 0
        most = 0
        tokens: list[int] = []

        async def send(i: int) -> None:
            nonlocal inside, most
            async with lists[i % 2].hold("tfs", timeout=10.0) as token:
                inside += 1
                most = max(most, inside)
                tokens.append(token)
                # Longer than the lease TTL: the holder's renewals must keep the others out.
                await asyncio.sleep(0.05 if i else 0.9)
                inside -= 1

        await asyncio.gather(*(send(i) for i in range(8)))
        assert most == 1
        assert tokens == sorted(tokens) and len(set(tokens)) == 8
    finally:
        await other.aclose()


async def test_a_sender_whose_lease_ran_out_cannot_record_its_list(store: RedisStore) -> None:
    lists = ServedLists(store, PlacementView(), lease_ttl=5.0)
    async with lists.hold("tfs", timeout=1.0) as token:
        assert await lists.record_sent("tfs", token, '[["a", "/models/a"]]')
        assert await lists.sent("tfs") == '[["a", "/models/a"]]'
        # The lease expires (the holder stalled) and another gateway takes it.
        await store.r.delete(store.k_served("tfs", "lock"))
        newer = await store.served_lock_try("tfs", 5000)
        assert newer is not None and newer > token
        assert not await lists.record_sent("tfs", token, "[]")
        assert await lists.sent("tfs") == '[["a", "/models/a"]]'
        assert await lists.record_sent("tfs", newer, "[]")
        await store.served_lock_release("tfs", newer)


async def test_hold_gives_up_after_its_timeout(store: RedisStore) -> None:
    lists = ServedLists(store, PlacementView(), lease_ttl=5.0, poll=0.01)
    token = await store.served_lock_try("tfs", 5000)
    assert token is not None
    with pytest.raises(TimeoutError, match="model list of tfs"):
        async with lists.hold("tfs", timeout=0.1):
            pass
    await store.served_lock_release("tfs", token)
    async with lists.hold("tfs", timeout=0.1):
        pass
