"""Shared fixtures: a real redis-server per test session (stopped by pid), a key prefix per test, and the
session's local stack of real parts (Redis, two Tritons) with `modelyard serve` processes per test, used by
tests/gateway and tests/sources (its models, token and answer checks: tests/gateway/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from deploy.localstack.stack import GatewayProcess, LocalStack
from gateway.embedded_redis import RedisServer
from tests.gateway.conftest import MODELS, STALL, TOKEN, StartGateway


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    with LocalStack(
        workdir,
        MODELS,
        tritons=2,
        failing=["broken"],
        execute_delay_s={"slow": 1.0, "slower": 2.0},
        stalls={"stall": STALL},
        fail_fractions={"flaky": 0.2},  # an error answer on a reproducible fifth of its calls
        token=TOKEN,
    ) as s:
        yield s


@pytest.fixture
def new_loads(stack: LocalStack) -> Callable[[], list[str]]:
    """Real loads Triton did since the test began (the load log is shared by the session)."""
    mark = len(stack.loads())
    return lambda: stack.loads()[mark:]


@pytest.fixture
def start_gateway(stack: LocalStack) -> Iterator[StartGateway]:
    """Start `modelyard serve` processes sharing the stack's Redis under one fresh key prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def start(*extra: str) -> GatewayProcess:
        return stack.add_gateway(prefix=prefix, extra=extra)

    yield start
    stack.stop_gateways()
    stack.unload_everything()
