"""Getting a ready copy of a model: coalesced loads, leases with fencing tokens, slots, eviction.

`Loader.ensure(model)` returns a backend that holds a ready copy. Concurrent calls for one model share one
task in this process; across gateways, the one that holds the model's Redis lease does the work and the
others wait for its events. Within the lease, the procedure is:

1. look in Redis for a ready copy (another gateway may have just loaded it);
2. reserve a slot on a backend with a Lua script that counts the backend's copies atomically;
3. when no backend has room, evict the least recently used copy that may be evicted: mark it unloading,
   wait for the backend to finish unloading it, free its slot; then try to reserve again;
4. load, then commit the copy as ready; the commit is refused if the lease's fencing token moved on.

A failed load marks the copy failed with the backend's reason and backs the model off exponentially, so a
model that keeps failing is not reloaded in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from adapters.base import LoadRequest, RuntimeAdapter
from adapters.errors import BackendError, BackendLoadError
from placement.clock import Clock
from placement.errors import LeaseLost, LoadFailed, NoCapacity, UnknownModel
from placement.eviction import EvictionCandidate, EvictionPolicy
from placement.policy import BackendChooser, BackendLoad
from placement.records import CopyRecord, CopyState, ModelSpec
from placement.settings import PlacementSettings
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task
from placement.usage import Usage
from placement.view import PlacementView


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


log = logging.getLogger("modelyard.placement")


class PrewarmSkipped(Exception):
    """A pre-warm stood aside (no room it may take, a load under way, the model loading elsewhere)."""


def _no_wrap(model: str, load: Coroutine[Any, Any, str]) -> Coroutine[Any, Any, str]:
    return load


class LoadEvents:
    """Counters the loader moves, and hooks through which the gateway observes loads (metrics, spans; no
    registry or tracer here). Hooks run synchronously in the task doing the work: a load's in the load's task
    (created in the context of the request that started it), a join's in the joining request's."""

    def __init__(self) -> None:
        self.loads = 0
        self.load_failures = 0
        self.evictions = 0
        self.unloads = 0
        self.joined = 0  # requests that joined a load already under way in this process
        self.on_load: Callable[[str, str, float, bool], None] = lambda model, backend, seconds, ok: None
        self.on_unload: Callable[[str, str, str, bool], None] = lambda model, backend, reason, ok: None
        self.on_eviction: Callable[[str, str, float], None] = lambda model, backend, idle_seconds: None
        self.on_join: Callable[[str], None] = lambda model: None
        # Wraps the coroutine of each coalesced load (one per model in this process), e.g. in a span.
        self.wrap_load: Callable[[str, Coroutine[Any, Any, str]], Coroutine[Any, Any, str]] = _no_wrap


class Loader:
    def __init__(
        self,
        store: RedisStore,
        view: PlacementView,
        usage: Usage,
        adapters: Callable[[str], RuntimeAdapter],
        settings: PlacementSettings,
        clock: Clock,
        chooser: BackendChooser,
        eviction: EvictionPolicy,
    ) -> None:
        self.store = store
        self.view = view
        self.usage = usage
        self.adapter = adapters
        self.settings = settings
        self.clock = clock
        self.chooser = chooser
        self.eviction = eviction
        self.events = LoadEvents()
        self._tasks: dict[str, asyncio.Task[str]] = {}

    # -- the entry point -------------------------------------------------------------------------------
    async def ensure(self, name: str, timeout: float | None = None) -> str:
        """A backend holding a ready copy of `name`, loading one if needed. Coalesced per model."""
        task = self._tasks.get(name)
        if task is None:
            load = self.events.wrap_load(name, self._ensure_task(name))
            task = self._track(name, load)
        else:
            self.events.joined += 1
            self.events.on_join(name)
        # By default wait a little past the load's own deadline, so the load's precise reason reaches the caller.
        wait = self.settings.load_timeout + max(1.0, 4 * self.settings.wait_poll) if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            raise NoCapacity(
                f"model {name!r} is not ready after waiting {wait:g} s for its load; try again shortly",
                retry_after=max(1.0, self.settings.wait_poll * 4),
            ) from None
        except PrewarmSkipped:
            # We joined a pre-warm that found no room it may take: load on demand instead.
            if self._tasks.get(name) is task:
                self._tasks.pop(name, None)
            return await self.ensure(name, timeout)

    def _track(self, name: str, load: Coroutine[Any, Any, str]) -> asyncio.Task[str]:
        task = asyncio.create_task(load, name=f"modelyard-load-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._tasks.pop(name, None) if self._tasks.get(name) is t else None)
        return task

    def loading(self) -> bool:
        """Whether this process has a load (demand or pre-warm) under way."""
        return bool(self._tasks)

    # -- pre-warming (placement.prewarm_task) ----------------------------------------------------------
    async def prewarm(self, name: str, worth: float, busy_window: float) -> str | None:
        """Load `name` ahead of demand, as a low-priority load; the backend, or None when it stood aside.

        Same lease, fencing and commit as a demand load (a request for `name` meanwhile joins it), but it never
        waits: it takes free room, or evicts one ready copy the eviction policy scores below `worth` (the
        model's own score) that no request used for `busy_window` seconds (other gateways' requests in flight
        refresh a copy's last use at every usage flush) and none is in flight on here; otherwise None. It
        stands aside (None) while this process has any load under way."""
        if self._tasks or any(s.holds_slot for s in self.view.copies.get(name, {}).values()):
            return None
        task = self._track(name, self.events.wrap_load(name, self._prewarm_task(name, worth, busy_window)))
        try:
            return await asyncio.shield(task)
        except PrewarmSkipped:
            return None

    async def _prewarm_task(self, name: str, worth: float, busy_window: float) -> str:
        spec = self.view.models.get(name)
        if spec is None:
            raise PrewarmSkipped(name)
        status = await self.store.model_status(name)
        if status and status.retry_at and status.retry_at > self.clock.now():
            raise PrewarmSkipped(name)  # backing off after a failed load
        token = await self.store.lease_try(name, int(self.settings.lease_ttl * 1000))
        if token is None:
            raise PrewarmSkipped(name)  # someone is loading it already
        async with self._holding_lease(name, token):
            if await self._ready_copy(name) is not None:
                raise PrewarmSkipped(name)
            backend = await self._prewarm_slot(spec, token, worth, busy_window)
            if backend is None:
                raise PrewarmSkipped(name)
            return await self._load(spec, backend, token)

    async def _prewarm_slot(self, spec: ModelSpec, token: int, worth: float, busy_window: float) -> str | None:
        """One pass, never waiting: free room, else one eviction of a cheaper idle copy, then one reservation."""
        loads, held = await self._loads(spec)
        taken = {bid for bid, cs in held.items() if any(c.state is not CopyState.READY for c in cs)}
        if taken:
            return None  # a load or unload is under way there: demand loads go first
        for b in self.chooser.rank(spec, [b for b in loads if b.fits(spec)]):
            if await self.store.reserve(b.backend, spec.name, spec.memory_bytes, token, self.clock.now()) == "ok":
                self.view.set_copy(spec.name, b.backend, CopyState.LOADING)
                return b.backend
        await self.store.touch_many(*self.usage.drain_all())
        by_backend = {b.backend: b for b in loads if b.could_ever_fit(spec)}
        candidates = await self.eviction_candidates(list(by_backend), held)
        now = self.clock.now()
        for cand in self.eviction.rank(candidates):
            b = by_backend[cand.backend]
            freed = BackendLoad(b.backend, b.models - 1, b.cap_models, b.memory_bytes - cand.memory_bytes, b.cap_bytes)
            if (
                now - max(cand.last_used, cand.loaded_at) < busy_window
                or not freed.fits(spec)
                or self.eviction.score(cand) >= worth
                or not self._evictable(cand.model, cand.backend)
            ):
                continue
            if not await self._evict(cand, spec.name, len(candidates)):
                return None
            if await self.store.reserve(b.backend, spec.name, spec.memory_bytes, token, self.clock.now()) == "ok":
                self.view.set_copy(spec.name, b.backend, CopyState.LOADING)
                return b.backend
            return None
        return None

    async def ensure_copies(self, name: str, want: int) -> int:
        """Load copies of `name` on distinct backends until `want` are ready (or no room); returns how many."""
        spec = self.view.models.get(name) or await self.store.get_model_spec(name)
        if spec is None:
            raise UnknownModel(f"model {name!r} is not registered")
        token = await self.store.lease_try(name, int(self.settings.lease_ttl * 1000))
        if token is None:
            return len(self.view.ready_backends(name))
        deadline = _loop_time() + self.settings.load_timeout
        async with self._holding_lease(name, token):
            while True:
                copies = await self.store.copies_of(name)
                ready = [c for c in copies if c.state is CopyState.READY and self.view.usable(c.backend)]
                if len(ready) >= want:
                    return len(ready)
                backend = await self._reserve(spec, token, deadline)
                await self._load(spec, backend, token)

    async def _ensure_task(self, name: str) -> str:
        deadline = _loop_time() + self.settings.load_timeout
        while True:
            spec = self.view.models.get(name) or await self.store.get_model_spec(name)
            if spec is None:
                raise UnknownModel(f"model {name!r} is not registered")
            ready = await self._ready_copy(name)
            if ready is not None:
                return ready
            await self._check_backoff(name)
            token = await self.store.lease_try(name, int(self.settings.lease_ttl * 1000))
            if token is None:
                # Another gateway is loading it: wait for its events (or a short poll), then look again.
                if _loop_time() >= deadline:
                    raise NoCapacity(f"model {name!r} is still being loaded by another gateway", 1.0)
                await self.view.wait(name, self.settings.wait_poll)
                continue
            try:
                async with self._holding_lease(name, token):
                    return await self._place(spec, token, deadline)
            except LeaseLost as exc:
                # Whoever holds the lease now finishes (or adopts) the load; look again.
                log.warning("%s", exc)
                continue

    async def _ready_copy(self, name: str) -> str | None:
        copies = await self.store.copies_of(name)
        ready = [c.backend for c in copies if c.state is CopyState.READY and self.view.usable(c.backend)]
        for c in copies:
            self.view.set_copy(name, c.backend, c.state)
        return ready[0] if ready else None

    async def _check_backoff(self, name: str) -> None:
        status = await self.store.model_status(name)
        if status and status.retry_at and status.retry_at > self.clock.now():
            wait = status.retry_at - self.clock.now()
            raise LoadFailed(
                f"model {name!r} failed to load ({status.failures} time(s) in a row): {status.last_error}; "
                f"the next attempt is allowed in {wait:.1f} s",
                reason=status.last_error or "",
                retry_after=wait,
            )

    @contextlib.asynccontextmanager
    async def _holding_lease(self, name: str, token: int) -> AsyncIterator[None]:
        """Keep the lease renewed while the body runs; then stop renewing and release it."""
        stop = asyncio.Event()
        renew = asyncio.create_task(self._renew(name, token, stop), name=f"modelyard-lease-{name}")
        try:
            yield
        finally:
            await stop_task(renew, stop)
            with contextlib.suppress(Exception):
                await self.store.lease_release(name, token)

    async def _renew(self, name: str, token: int, stop: asyncio.Event) -> None:
        ttl_ms = int(self.settings.lease_ttl * 1000)
        while not await sleep_or_stop(stop, self.settings.lease_ttl / 3):
            if not await self.store.lease_renew(name, token, ttl_ms):
                log.warning("lost the load lease of %s (token %d)", name, token)
                return

    # -- under the lease -------------------------------------------------------------------------------
    async def _place(self, spec: ModelSpec, token: int, deadline: float) -> str:
        name = spec.name
        copies = await self.store.copies_of(name)
        for c in copies:
            if c.state is CopyState.READY and self.view.usable(c.backend):
                return c.backend
        backend = None
        # A loading copy seen while we hold the lease was left by a gateway that lost its lease: take it over.
        for c in copies:
            if c.state is CopyState.LOADING and self.view.usable(c.backend):
                if await self.store.adopt(c.backend, name, token) == "ok":
                    backend = c.backend
                    break
        if backend is None:
            backend = await self._reserve(spec, token, deadline)
        return await self._load(spec, backend, token)

    async def _load(self, spec: ModelSpec, backend: str, token: int) -> str:
        name = spec.name
        started = _loop_time()
        # The load time the eviction policies learn comes from the injected clock, so a test's fake clock decides
        # it (a machine's load can't reorder a test's evictions); metrics use the loop's clock.
        learn_from = self.clock.now()
        log.debug("loading %s on %s", name, backend, extra={"event": "load_started", "model": name, "backend": backend})
        try:
            await self.adapter(backend).load(LoadRequest(name, spec.source))
        except BackendError as exc:
            reason = str(exc)
            if not isinstance(exc, BackendLoadError):
                # Timed out or unreachable: the backend may still finish the load. Unload it before the slot
                # is given back, so that capacity can't be exceeded behind our back. The copy is marked
                # unloading first, so no gateway asks for it again (TF Serving is sent whole model lists).
                marked = await self.store.begin_unload(backend, name, self.clock.now(), CopyState.LOADING, token)
                if marked not in ("ok", "none"):
                    raise LeaseLost(f"lost the load of {name!r} on {backend} ({marked})") from exc
                try:
                    await self.adapter(backend).unload(name)
                except BackendError:
                    # The copy stays 'unloading' with its slot; reconciliation finishes the unload later.
                    self.events.on_unload(name, backend, "failed", False)
                    self.events.on_load(name, backend, _loop_time() - started, False)
                    log.warning(
                        "%s: load of %s failed and so did the unload; slot kept",
                        backend,
                        name,
                        extra={"event": "load_failed", "model": name, "backend": backend, "reason": reason},
                    )
                    raise LoadFailed(f"model {name!r} could not be loaded: {reason}", reason, 5.0) from exc
                await self.store.remove_copy(backend, name, CopyState.UNLOADING)
                self.events.on_unload(name, backend, "failed", True)
            delay = await self.store.fail(
                backend,
                name,
                token,
                self.clock.now(),
                reason,
                self.settings.failure_backoff,
                self.settings.failure_backoff_max,
            )
            self.events.load_failures += 1
            self.events.on_load(name, backend, _loop_time() - started, False)
            log.warning(
                "load of %s on %s failed: %s",
                name,
                backend,
                reason,
                extra={"event": "load_failed", "model": name, "backend": backend, "reason": reason},
            )
            if delay == "fenced":
                raise LeaseLost(f"lost the load lease of {name!r} while loading it") from exc
            raise LoadFailed(
                f"model {name!r} failed to load on backend {backend}: {reason}", reason, float(delay)
            ) from exc
        result = await self.store.commit(backend, name, token, self.clock.now())
        if result != "ok":
            # Our lease expired and someone else owns the load now; we may not write. They will adopt it.
            raise LeaseLost(f"the load of {name!r} on {backend} could not be committed ({result})")
        self.view.set_copy(name, backend, CopyState.READY)
        seconds = _loop_time() - started
        with contextlib.suppress(Exception):  # learning the cost is best effort: the copy is ready either way
            await self.store.note_load_seconds(name, max(0.0, self.clock.now() - learn_from))
        self.events.loads += 1
        self.events.on_load(name, backend, seconds, True)
        log.info(
            "loaded %s on %s in %.2f s",
            name,
            backend,
            seconds,
            extra={"event": "load", "model": name, "backend": backend, "seconds": round(seconds, 3)},
        )
        return backend

    async def _loads(self, spec: ModelSpec) -> tuple[list[BackendLoad], dict[str, list[CopyRecord]]]:
        """Occupancy of every usable backend of the model's runtime, straight from Redis."""
        loads: list[BackendLoad] = []
        held: dict[str, list[CopyRecord]] = {}
        for bid, rec in sorted(self.view.backends.items()):
            if rec.spec.kind != spec.runtime or not self.view.usable(bid):
                continue
            copies = [c for c in await self.store.copies_on(bid) if c.state.holds_slot]
            held[bid] = copies
            cap = rec.spec.capacity
            loads.append(
                BackendLoad(bid, len(copies), cap.models, sum(c.memory_bytes for c in copies), cap.memory_bytes)
            )
        return loads, held

    async def _reserve(self, spec: ModelSpec, token: int, deadline: float) -> str:
        name = spec.name
        next_report = _loop_time() + 5.0
        while True:
            loads, held = await self._loads(spec)
            # Backends holding a copy of this model now (read again each pass: one may be finishing an unload).
            taken = {bid for bid, cs in held.items() if any(c.model == name for c in cs)}
            loads = [b for b in loads if b.backend not in taken and b.could_ever_fit(spec)]
            if not loads:
                raise NoCapacity(
                    f"no healthy {spec.runtime} backend can hold model {name!r} now"
                    f"{' (it needs ' + str(spec.memory_bytes) + ' bytes)' if spec.memory_bytes else ''}; "
                    "register or restore a backend, or try again",
                    retry_after=5.0,
                )
            for b in self.chooser.rank(spec, [b for b in loads if b.fits(spec)]):
                res = await self.store.reserve(b.backend, name, spec.memory_bytes, token, self.clock.now())
                if res == "ok":
                    self.view.set_copy(name, b.backend, CopyState.LOADING)
                    return b.backend
            if await self._evict_one(spec, [b.backend for b in loads], held):
                continue
            if _loop_time() >= next_report:
                next_report = _loop_time() + 5.0
                log.warning("%s is waiting for a slot: %s", name, self._why_full(loads, held))
            if _loop_time() >= deadline:
                raise NoCapacity(
                    f"no slot for model {name!r}: every loaded model is pinned, kept by min_copies or busy; "
                    "add capacity or try again",
                    retry_after=max(1.0, self.settings.wait_poll * 4),
                )
            await self.view.wait(None, self.settings.wait_poll)

    async def _evict_one(self, spec: ModelSpec, backends: list[str], held: dict[str, list[CopyRecord]]) -> bool:
        """Free one slot on one of `backends` by unloading the evictable copy the eviction policy ranks first."""
        # Our own recent requests must count before we judge what is least recently used.
        await self.store.touch_many(*self.usage.drain_all())
        candidates = await self.eviction_candidates(backends, held)
        for cand in self.eviction.rank(candidates):
            if not self._evictable(cand.model, cand.backend):  # a request may have started meanwhile
                continue
            if await self._evict(cand, spec.name, len(candidates)):
                return True
        return False

    async def _evict(self, cand: EvictionCandidate, for_model: str, of: int) -> bool:
        """Unload `cand` to make room for `for_model` (the policy ranked it first of `of`); False if not ready."""
        score = self.eviction.score(cand)
        if not await self.unload_copy(cand.model, cand.backend, reason="evicted"):
            return False
        self.eviction.evicted(cand)
        idle = max(0.0, self.clock.now() - cand.last_used)
        self.events.evictions += 1
        self.events.on_eviction(cand.model, cand.backend, idle)
        reason = f"{self.eviction.name} ranked it first of {of} (score {score:.4g})"
        log.info(
            "evicted %s from %s (idle %.1f s) to make room for %s: %s",
            cand.model,
            cand.backend,
            idle,
            for_model,
            reason,
            extra={
                "event": "eviction",
                "model": cand.model,
                "backend": cand.backend,
                "idle_seconds": round(idle, 3),
                "for_model": for_model,
                "policy": self.eviction.name,
                "score": round(score, 6),
                "reason": reason,
            },
        )
        return True

    async def eviction_candidates(
        self, backends: list[str], held: dict[str, list[CopyRecord]]
    ) -> list[EvictionCandidate]:
        """The ready copies on `backends` that may be evicted now, with what the policy weighs (Redis reads)."""
        copies = [c for bid in backends for c in held.get(bid, []) if c.state is CopyState.READY]
        return await self._candidates([c for c in copies if self._evictable(c.model, c.backend)])

    async def policy_scores(self, copies: list[CopyRecord]) -> dict[tuple[str, str], float]:
        """The eviction policy's score of each ready copy, (model, backend) -> score (higher: kept longer)."""
        cands = await self._candidates([c for c in copies if c.state is CopyState.READY])
        return {(c.model, c.backend): self.eviction.score(c) for c in cands}

    async def _candidates(self, copies: list[CopyRecord]) -> list[EvictionCandidate]:
        facts = await self.store.eviction_facts(c.model for c in copies)
        lru = {bid: await self.store.lru_of(bid) for bid in {c.backend for c in copies}}
        # Last request on any gateway, kept across evictions: tells a pre-warmed copy (loaded after it, not used
        # yet) from the rest, so `nextuse` counts it down to its expected request instead of calling it idle.
        last = await self.store.last_requests(c.model for c in copies)
        out = []
        for c in copies:
            spec = self.view.models.get(c.model)
            requests, seconds, gap = facts.get(c.model, (0, 0.0, 0.0))
            out.append(
                EvictionCandidate(
                    c.model,
                    c.backend,
                    lru[c.backend].get(c.model, c.since),
                    memory_bytes=spec.memory_bytes if spec is not None else c.memory_bytes,
                    loaded_at=c.since,
                    requests=requests,
                    load_seconds=seconds,
                    mean_gap=gap,
                    last_request=last.get(c.model, 0.0),
                )
            )
        return out

    def _why_full(self, loads: list[BackendLoad], held: dict[str, list[CopyRecord]]) -> str:
        """Why no candidate backend can take the model now, copy by copy (for the operator's log)."""
        parts = []
        for b in loads:
            notes = []
            for c in held.get(b.backend, []):
                spec = self.view.models.get(c.model)
                if c.state is not CopyState.READY:
                    why = c.state.value
                elif spec is not None and spec.pinned:
                    why = "pinned"
                elif self.usage.inflight(c.model, b.backend):
                    why = f"{self.usage.inflight(c.model, b.backend)} in flight"
                elif not self._evictable(c.model, b.backend):
                    why = f"kept by min_copies (view: {self.view.copies.get(c.model)})"
                else:
                    why = "evictable"
                notes.append(f"{c.model} {why}")
            parts.append(f"{b.backend} {b.models}/{b.cap_models} [{', '.join(notes)}]")
        return "; ".join(parts)

    def _evictable(self, model: str, backend: str) -> bool:
        spec = self.view.models.get(model)
        if spec is not None and spec.pinned:
            return False
        if self.usage.inflight(model, backend) > 0:
            return False
        if spec is None or spec.min_copies == 0:
            return True
        # Ready copies anywhere, whatever this gateway thinks of their backends' health right now.
        ready = sum(1 for s in self.view.copies.get(model, {}).values() if s is CopyState.READY)
        return ready > spec.min_copies

    # -- unloading -------------------------------------------------------------------------------------
    async def unload_copy(self, model: str, backend: str, reason: str) -> bool:
        """Unload one ready copy; the slot is freed only after the backend finished. False if not ready."""
        previous = self.view.copies.get(model, {}).get(backend)
        # Stop local requests from choosing this copy before anything is awaited.
        self.view.set_copy(model, backend, CopyState.UNLOADING)
        res = await self.store.begin_unload(backend, model, self.clock.now())
        if res != "ok":
            if previous is not None and res.startswith("state:"):
                self.view.set_copy(model, backend, CopyState(res.split(":", 1)[1]))
            elif res == "none":
                self.view.set_copy(model, backend, None)
            return False
        try:
            await self.adapter(backend).unload(model)
        except BackendError as exc:
            # The copy stays 'unloading' and keeps its slot; reconciliation retries the unload.
            self.events.on_unload(model, backend, reason, False)
            log.warning(
                "unload of %s from %s (%s) failed: %s",
                model,
                backend,
                reason,
                exc,
                extra={"event": "unload_failed", "model": model, "backend": backend, "reason": reason},
            )
            return False
        await self.store.remove_copy(backend, model, CopyState.UNLOADING)
        self.view.set_copy(model, backend, None)
        self.events.unloads += 1
        self.events.on_unload(model, backend, reason, True)
        # An eviction gets its own line (with the copy's idle time) from `_evict_one`: one line per event.
        log.log(
            logging.DEBUG if reason == "evicted" else logging.INFO,
            "unloaded %s from %s (%s)",
            model,
            backend,
            reason,
            extra={"event": "unload", "model": model, "backend": backend, "reason": reason},
        )
        return True
