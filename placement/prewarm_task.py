"""Pre-warming in the gateway (`--prewarm on`): one leader loads models shortly before their expected request.

Every gateway runs `PrewarmTask`, but only the holder of the `__prewarm__` lease acts, so the cluster pre-warms
each model once; the leader keeps renewing its lease (its `Prewarmer` remembers misses) and another gateway takes
over when it lapses. Each tick (cold path: one lease round trip and one batched read, never on the warm path):

1. read every model's last use, learned gap and learned load time (`RedisStore.prewarm_facts`);
2. settle the pre-warms under way: a request after the pre-warm started means it was used; its copy gone
   before that means it was wasted (`Prewarmer` gives up on a model after `max_misses` of these in a row);
3. if no load is under way (none in this process, no copy loading or unloading anywhere in the view) and no
   pre-warm is running, start the one most overdue: `Loader.prewarm`, a low-priority load that takes free room
   or evicts only an idle copy the eviction policy scores below the model, and never waits for a slot.

At most one pre-warm runs at a time, and each expected request is pre-warmed for at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from placement.clock import Clock
from placement.errors import PlacementError
from placement.loader import Loader
from placement.prewarm import Prewarmer, prewarm_candidate
from placement.records import CopyState
from placement.redis_health import UNREACHABLE, RedisHealth
from placement.settings import PlacementSettings
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task
from placement.view import PlacementView

log = logging.getLogger("modelyard.prewarm")

LEASE = "__prewarm__"  # not a valid model name, so no model's load lease can collide with it


class PrewarmTask:
    def __init__(
        self,
        store: RedisStore,
        view: PlacementView,
        loader: Loader,
        settings: PlacementSettings,
        clock: Clock,
        prewarmer: Prewarmer | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.loader = loader
        self.settings = settings
        self.clock = clock
        self.prewarmer = prewarmer or Prewarmer()
        self.health = health  # while Redis is down, ticks are skipped (its one log line says so)
        # Results as they happen: loaded, skipped, failed, used, wasted, given_up (gateway metrics).
        self.on_result: Callable[[str, str], None] = lambda model, result: None
        self._token: int | None = None
        self._started: dict[str, float] = {}  # model -> when its pre-warmed copy was committed, not yet settled
        self._tried: dict[str, float] = {}  # model -> the last use whose next request was pre-warmed for
        self._expected: dict[str, tuple[float, float]] = {}  # model -> (its last use, when its pre-warm is due)
        self._running: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def leader(self) -> bool:
        return self._token is not None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._every(), name="modelyard-prewarm")

    async def stop(self) -> None:
        """Stop ticking and hand the lease back, so another gateway leads from its next tick."""
        await stop_task(self._loop, self._stop)
        await stop_task(self._running)
        if self._token is not None:
            token, self._token = self._token, None
            with contextlib.suppress(Exception):
                await self.store.lease_release(LEASE, token)

    async def _every(self) -> None:
        while not await sleep_or_stop(self._stop, self.settings.prewarm_interval):
            if self.health is not None and not self.health.up:
                continue
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("pre-warm tick", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        if isinstance(exc, UNREACHABLE):
            if self.health is not None:
                self.health.mark_down(f"{type(exc).__name__}: {exc}")
        elif isinstance(exc, PlacementError):
            log.info("%s failed: %s", what, exc)
        else:
            log.exception("%s failed", what)

    async def tick(self) -> None:
        """One round: keep (or take) the lease; if leader, settle pre-warms and start at most one."""
        if not await self._lead():
            return
        facts = await self.store.prewarm_facts()
        self._settle(facts)
        if (self._running is not None and not self._running.done()) or self._load_under_way():
            return
        now = self.clock.now()
        due: list[tuple[float, str]] = []
        for model, (last, gap, secs) in facts.items():
            self._note_late(model, last)
            spec = self.view.models.get(model)
            if spec is None or self._held(model) or self._tried.get(model) == last:
                continue
            when = self.prewarmer.due_at(model, last, gap, secs)
            if when is not None:
                self._expected[model] = (last, when)
            # Too late once the expected request is past: demand will load it if it comes.
            if when is not None and when <= now < last + gap:
                due.append((when, model))
        if not due:
            return
        _, model = min(due)
        last, gap, secs = facts[model]
        self._tried[model] = last
        worth = self.loader.eviction.score(
            prewarm_candidate(model, last, gap, secs, self.view.models[model].memory_bytes, now)
        )
        self._running = asyncio.create_task(self._prewarm(model, worth), name=f"modelyard-prewarm-{model}")

    def _note_late(self, model: str, last: float) -> None:
        """A request for `model` came before the pre-warm due for it and none was started: `Prewarmer.late`."""
        stamp, when = self._expected.get(model, (last, 0.0))
        if stamp != last:
            del self._expected[model]
            if last < when and self._tried.get(model) != stamp:
                self.prewarmer.late(model)

    async def wait_idle(self) -> None:
        """Wait for the pre-warm under way, if any (tests)."""
        if self._running is not None:
            await asyncio.shield(self._running)

    async def _lead(self) -> bool:
        ttl = int(max(3 * self.settings.prewarm_interval, 2.0) * 1000)
        if self._token is not None and await self.store.lease_renew(LEASE, self._token, ttl):
            return True
        was = self._token is not None
        self._token = await self.store.lease_try(LEASE, ttl)
        if self._token is None:
            if was:
                log.debug("no longer the pre-warm leader")
                self._started.clear()  # the new leader cannot tell us how they ended
            return False
        if not was:
            log.debug("pre-warm leader (token %d)", self._token)
        return True

    def _load_under_way(self) -> bool:
        if self.loader.loading():
            return True
        states = (s for copies in self.view.copies.values() for s in copies.values())
        return any(s in (CopyState.LOADING, CopyState.UNLOADING) for s in states)

    def _held(self, model: str) -> bool:
        return any(s.holds_slot for s in self.view.copies.get(model, {}).values())

    def _settle(self, facts: dict[str, tuple[float, float, float]]) -> None:
        for model, started in list(self._started.items()):
            last, gap, _ = facts.get(model, (0.0, 0.0, 0.0))
            if last >= started:
                del self._started[model]
                self.prewarmer.served(model)
                self.on_result(model, "used")
            elif not self.view.ready_backends(model) or self.clock.now() > started + 2 * gap:
                # Evicted unused, or still unused long past the request it was loaded for: a miss.
                del self._started[model]
                given_up = self.prewarmer.stats.given_up
                self.prewarmer.evicted(model)
                self.on_result(model, "wasted")
                if self.prewarmer.stats.given_up > given_up:
                    log.info("giving up pre-warming %s: its pre-warmed copies went unused", model)
                    self.on_result(model, "given_up")

    async def _prewarm(self, model: str, worth: float) -> None:
        try:
            backend = await self.loader.prewarm(model, worth, self._busy_window())
        except Exception as exc:
            self._failed(f"pre-warm of {model}", exc)
            self.on_result(model, "failed")
            return
        if backend is None:
            self.on_result(model, "skipped")
            return
        self.prewarmer.started(model)
        self._started[model] = self.clock.now()
        self.on_result(model, "loaded")
        log.info("pre-warmed %s on %s", model, backend, extra={"event": "prewarm", "model": model, "backend": backend})

    def _busy_window(self) -> float:
        # Requests in flight on any gateway refresh their copy's last use at every usage flush.
        return max(3 * self.settings.usage_flush_interval, 1.0)
