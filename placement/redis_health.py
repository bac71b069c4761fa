"""Whether this gateway can reach Redis, as one small object every Redis user of the gateway shares.

`ViewSync` decides "up" (a snapshot was read, the event connection answers its heartbeat) and "down" (it
lost the event connection or a heartbeat went unanswered); any command that fails with a connection error
also marks it down at once (`guard`). Each change is one log line, never one per request. While down:

- `guard` refuses at once with `StoreUnavailable` instead of waiting for a socket timeout, so a cold request
  gets a prompt 503 with Retry-After;
- `until_down` ends a wait (a cold load) the moment Redis is found unreachable;
- readiness stays true (warm models are served from the view): `/readyz` says "degraded" and since when.

`client(url)` builds the redis-py client with the timeouts this relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from placement.clock import Clock
from placement.errors import StoreUnavailable

log = logging.getLogger("modelyard.redis")
T = TypeVar("T")

# redis-py's errors that mean "Redis is not there (now)": refused, reset, a timeout, still loading its data.
UNREACHABLE: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# A failover left us on a replica: writes are refused, but Redis is up (reads and events work).
READ_ONLY = redis.exceptions.ReadOnlyError
REDIS_DOWN: tuple[type[Exception], ...] = (*UNREACHABLE, READ_ONLY)  # what `guard` translates

# Seconds. A command waits at most SOCKET_TIMEOUT for its reply (a paused Redis can't hang a request longer);
# a healthy Redis answers in well under a millisecond, so this is only ever reached in an outage.
SOCKET_TIMEOUT = 2.0  # also the connect timeout
RETRY_AFTER = 2.0  # what clients are told to wait while Redis is unreachable
NOT_YET = "not connected yet"


def client(url: str, timeout: float = SOCKET_TIMEOUT) -> aioredis.Redis:
    """A client whose every command is bounded in time: `timeout` for the reply and for connecting (redis-py's
    default is 5 s, long enough to stack up behind a paused Redis). A failed command is retried once, and only
    on a connection error (a pooled connection Redis closed: the retry uses a fresh one); a timed-out command,
    which Redis may have applied, is never sent again.
    """
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )


class RedisHealth:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.up = False  # nothing read yet
        self.ever_synced = False
        self.since: float | None = None  # when the current state began (epoch seconds); None before the first
        self.last_sync: float | None = None  # last time the view was known equal to Redis (snapshot or heartbeat)
        self.reason = NOT_YET
        self.outages = 0
        self._down = asyncio.Event()

    # -- state changes ---------------------------------------------------------------------------------
    def mark_up(self) -> None:
        """The view was just synced from Redis."""
        now = self.clock.now()
        self.last_sync = now
        if self.up:
            return
        if self.ever_synced:
            log.warning(
                "Redis is reachable again after %.1f s; the view was resynced",
                now - (self.since or now),
                extra={"event": "redis_up"},
            )
        self.up, self.ever_synced, self.since, self.reason = True, True, now, ""
        self._down.clear()

    def heard(self) -> None:
        """Redis answered (a heartbeat on the event connection): the view is current as of now."""
        if self.up:
            self.last_sync = self.clock.now()

    def mark_down(self, reason: str) -> None:
        if not self.up:
            if not self.ever_synced and self.reason == NOT_YET:
                log.warning("waiting for Redis to sync the view of placement: %s", reason)
            self.reason = reason
            return
        self.up, self.since, self.reason = False, self.clock.now(), reason
        self.outages += 1
        self._down.set()
        log.warning(
            "Redis is unreachable (%s): warm models keep being served from this gateway's view; cold loads, "
            "admin writes and names not seen yet answer 503 until it is back",
            reason,
            extra={"event": "redis_down"},
        )

    # -- for callers -----------------------------------------------------------------------------------
    def unavailable(self) -> StoreUnavailable:
        since = f" for {self.clock.now() - self.since:.0f} s" if self.since is not None and self.ever_synced else ""
        return StoreUnavailable(
            f"Redis, which holds the gateways' shared state, is unreachable{since} ({self.reason}); "
            "warm models keep serving, this request needs Redis: retry shortly",
            RETRY_AFTER,
        )

    def check(self) -> None:
        """Refuse at once while Redis is known to be unreachable (only after the first sync: before it, the
        gateway is not ready anyway and every call is a probe)."""
        if not self.up and self.ever_synced:
            raise self.unavailable()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run Redis calls: refused at once while Redis is down; redis-py's connection errors become
        `StoreUnavailable` (and mark Redis down), a read-only replica's refusal too."""
        self.check()
        try:
            yield
        except REDIS_DOWN as exc:
            raise self.translate(exc) from exc

    def translate(self, exc: Exception) -> StoreUnavailable:
        """The placement error for one of redis-py's `UNREACHABLE` or `READ_ONLY` errors (the former marks
        Redis down)."""
        if isinstance(exc, READ_ONLY):
            return StoreUnavailable(
                f"Redis refuses writes (a read-only replica: {exc}); point --redis-url at the primary", RETRY_AFTER
            )
        self.mark_down(f"{type(exc).__name__}: {exc}")
        return self.unavailable()

    async def until_down(self, work: Awaitable[T]) -> T:
        """Await `work`, but give up with `StoreUnavailable` as soon as Redis is found unreachable (`work` is
        cancelled; a coalesced load it waits for is shielded and goes on)."""
        task = asyncio.ensure_future(work)
        down = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
            if not task.done():  # Redis went down, or our caller was cancelled
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            raise self.unavailable()
        return task.result()
