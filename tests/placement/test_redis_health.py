"""RedisHealth: one log line per change, redis-py's errors mapped once, waits that end when Redis goes down, and
a client whose commands are bounded in time (a server that accepts and never answers stands for a paused Redis)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import pytest
import redis.exceptions

from placement.clock import FakeClock
from placement.errors import StoreUnavailable
from placement.redis_health import RedisHealth, client


def test_one_log_line_per_change_of_reachability(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    health = RedisHealth(clock)
    caplog.set_level(logging.WARNING, "modelyard.redis")
    health.mark_up()
    for _ in range(3):
        health.mark_down("refused")
    clock.advance(4)
    for _ in range(2):
        health.mark_up()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "unreachable (refused)" in messages[0], messages
    assert "reachable again after 4.0 s" in messages[1]
    assert health.up and health.outages == 1


async def test_guard_maps_redis_errors_once_and_refuses_at_once_while_down() -> None:
    health = RedisHealth(FakeClock())
    health.mark_up()
    with pytest.raises(StoreUnavailable, match="unreachable") as info, health.guard():
        raise redis.exceptions.ConnectionError("Connection refused")
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError) and not health.up
    ran = False
    with pytest.raises(StoreUnavailable), health.guard():
        ran = True
    assert not ran  # refused before any Redis call
    with pytest.raises(StoreUnavailable, match="read-only"), RedisHealth(FakeClock()).guard():
        raise redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica.")


async def test_a_wait_ends_when_redis_goes_down() -> None:
    health = RedisHealth(FakeClock())
    health.mark_up()
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(health.until_down(never))
    await asyncio.sleep(0)
    health.mark_down("paused")
    with pytest.raises(StoreUnavailable):
        await waiting
    assert never.cancelled()
    health.mark_up()
    assert await health.until_down(asyncio.sleep(0, "done")) == "done"


async def test_a_command_to_a_silent_redis_times_out_once_and_is_not_retried() -> None:
    """The client's retry policy retries on connection errors only: a timed-out command (which may have been
    applied) is not sent again, and a paused Redis costs one timeout, not several."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    c = client(f"redis://127.0.0.1:{listener.getsockname()[1]}", timeout=0.2)
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            await c.ping()
        assert len(accepted) == 1
    finally:
        await c.aclose()
        listener.close()
        for s in accepted:
            s.close()
