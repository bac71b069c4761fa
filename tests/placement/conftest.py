from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from placement.clock import FakeClock
from placement.placer import Placer
from placement.records import BackendSpec, ModelSpec
from placement.settings import PlacementSettings
from placement.store import RedisStore
from tests.fakes import FakeAdapter, FakeBackend

MakePlacer = Callable[..., Awaitable[Placer]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backends() -> dict[str, FakeBackend]:
    return {}


@pytest.fixture
async def make_placer(
    redis_server: object, prefix: str, clock: FakeClock, backends: dict[str, FakeBackend]
) -> AsyncIterator[MakePlacer]:
    """Placers (one per simulated gateway) sharing one Redis prefix and the same fake backends."""
    made: list[tuple[Placer, aioredis.Redis]] = []

    async def make(**overrides: object) -> Placer:
        settings = PlacementSettings(
            redis_prefix=prefix,
            load_timeout=float(overrides.pop("load_timeout", 5.0)),
            wait_poll=0.05,
            health_interval=3600,
            reconcile_interval=3600,
            usage_flush_interval=3600,
            **overrides,  # type: ignore[arg-type]
        )
        client = aioredis.from_url(redis_server.url)  # type: ignore[attr-defined]
        store = RedisStore(client, prefix)
        placer = Placer(store, lambda spec: FakeAdapter(backends[spec.id]), settings, clock)
        await placer.start()
        made.append((placer, client))
        return placer

    yield make
    for placer, client in made:
        await placer.stop()
        await client.aclose()


async def register(
    placer: Placer, backends: dict[str, FakeBackend], caps: dict[str, int], models: list[ModelSpec]
) -> None:
    for bid, cap in caps.items():
        backends[bid] = FakeBackend(bid, cap)
        spec = BackendSpec.parse(
            bid, {"kind": "triton", "url": f"http://127.0.0.1:1/{bid}", "capacity": {"models": cap}}
        )
        await placer.store.put_backend(spec)
    for m in models:
        await placer.store.put_model(m)
    await placer.sync.resync()
