"""Each gateway's local view of placement, kept fresh from Redis pub/sub.

The warm request path reads only this view: which backends hold a ready copy of a model, whether those
backends are usable, and what a route resolves to. It is rebuilt from a full snapshot when the gateway starts,
after any pub/sub reconnection, and every `resync_interval` seconds (pub/sub is at-most-once); between
snapshots it applies the events the Lua scripts in `placement.store` publish:

    {"t": "copy", "m": model, "b": backend, "s": "loading"|"ready"|"unloading"|"failed"|"gone"}
    {"t": "backend", "b": id}        backend registered, changed, drained or removed: re-read it
    {"t": "model", "m": name}        model registered, changed or removed: re-read it
    {"t": "lease", "m": name}        a load lease was released: waiters look again
    {"t": "route", "r": name}        route registered, changed or removed: re-read it

Waiters (`wait`) are woken by any event about their model, and by any event that frees a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from placement.clock import SystemClock
from placement.health import OutlierEjector
from placement.records import BackendRecord, CopyState, ModelSpec, RouteSpec
from placement.redis_health import RedisHealth
from placement.store import ModelsMark, RedisStore, Snapshot
from placement.tasks import sleep_or_stop, stop_task

log = logging.getLogger("modelyard.view")


class PlacementView:
    def __init__(self) -> None:
        self.backends: dict[str, BackendRecord] = {}
        self.models: dict[str, ModelSpec] = {}
        self.routes: dict[str, RouteSpec] = {}
        self.copies: dict[str, dict[str, CopyState]] = {}
        # Health as this gateway sees it; a backend it cannot reach gets no requests from it.
        self.reachable: dict[str, bool] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._slot_waiters: list[asyncio.Future[None]] = []
        self.on_backends_changed: Callable[[], None] | None = None
        self.on_route_event: Callable[[str], None] | None = None
        # Data loss (placement.rebuild): the generation of Redis this view mirrors, the versions of its records
        # and the tombstones it knows ("kind:name" -> version). A snapshot of another generation (or none) is not
        # loaded over the registry: `on_generation_lost` is called, and the view keeps serving what it has.
        self.generation: str | None = None
        self.versions: dict[str, int] = {}
        self.tombstones: dict[str, int] = {}
        self.on_generation_lost: Callable[[], None] | None = None
        # The models' mark when this view last read them all: a resync re-reads them only when it moved.
        self.models_mark: ModelsMark | None = None
        # Models that ask for more copies than the default (min_copies > 0 or max_copies > 1): all that the
        # reconcile leader's min-copies pass and copy scaler walk, so their rounds don't grow with the registry.
        self.replicated: set[str] = set()
        # Passive outlier ejection (placement.health): backends this gateway's data plane saw failing.
        self.outliers: OutlierEjector = OutlierEjector(SystemClock())

    # -- reads on the request path ---------------------------------------------------------------------
    def usable(self, backend: str) -> bool:
        rec = self.backends.get(backend)
        return (
            rec is not None
            and not rec.draining
            and self.reachable.get(backend, True)
            and not self.outliers.ejected(backend)
        )

    def ready_backends(self, model: str) -> list[str]:
        held = self.copies.get(model)
        if not held:
            return []
        return [b for b, s in held.items() if s is CopyState.READY and self.usable(b)]

    # -- updates ---------------------------------------------------------------------------------------
    def load_snapshot(self, snap: Snapshot) -> None:
        if (
            snap.generation is None
            or (self.generation is not None and snap.generation != self.generation)
            or self._records_lost(snap)
        ):
            # Redis is new or lost data: keep serving from what this view holds until it is rebuilt.
            if self.on_generation_lost is not None:
                self.on_generation_lost()
            if self.generation is not None:
                return
        self.generation = snap.generation
        for key, ver in snap.tombstones.items():
            self.tombstones[key] = max(ver, self.tombstones.get(key, 0))
        if snap.models_kept:  # nobody wrote a model since this view read them: keep its own, and their versions
            self.versions = {k: v for k, v in self.versions.items() if k.startswith("model:")} | snap.versions
        else:
            self.versions = dict(snap.versions)
            self.models = dict(snap.models)
            self.replicated = {n for n, spec in self.models.items() if _replicated(spec)}
        self.models_mark = snap.models_mark
        self.backends = dict(snap.backends)
        self.routes = dict(snap.routes)
        self.copies = {m: {b: c.state for b, c in held.items()} for m, held in snap.copies.items()}
        self._notify_all()
        if self.on_backends_changed:
            self.on_backends_changed()

    def _records_lost(self, snap: Snapshot) -> bool:
        """A record this view holds that the snapshot lacks with no delete (tombstone) to say why: Redis lost it
        while keeping its generation (a failover to a replica that was behind)."""
        if self.generation is None:
            return False
        held = [
            *(f"backend:{b}" for b in self.backends if b not in snap.backends),
            *(() if snap.models_kept else (f"model:{m}" for m in self.models if m not in snap.models)),
            *(f"route:{r}" for r in self.routes if r not in snap.routes),
        ]
        return any(snap.tombstones.get(key, -1) < self.versions.get(key, 0) for key in held)

    def set_copy(self, model: str, backend: str, state: CopyState | None) -> None:
        if state is None:
            held = self.copies.get(model)
            if held is not None:
                held.pop(backend, None)
                if not held:
                    del self.copies[model]
        else:
            self.copies.setdefault(model, {})[backend] = state
        self._notify(model)
        if state in (None, CopyState.FAILED, CopyState.UNLOADING):
            self._notify_slots()

    def set_backend(self, backend: str, record: BackendRecord | None) -> None:
        if record is None:
            self.backends.pop(backend, None)
            for model in list(self.copies):
                self.set_copy(model, backend, None)
        else:
            self.backends[backend] = record
        self._notify_slots()
        if self.on_backends_changed:
            self.on_backends_changed()

    def set_model(self, name: str, spec: ModelSpec | None) -> None:
        if spec is None:
            self.models.pop(name, None)
        else:
            self.models[name] = spec
        if spec is not None and _replicated(spec):
            self.replicated.add(name)
        else:
            self.replicated.discard(name)
        self._notify(name)

    def set_route(self, name: str, spec: RouteSpec | None) -> None:
        if spec is None:
            self.routes.pop(name, None)
        else:
            self.routes[name] = spec
        if self.on_route_event:
            self.on_route_event(name)

    def apply_copy_event(self, event: dict[str, Any]) -> None:
        state = str(event.get("s"))
        self.set_copy(event["m"], event["b"], None if state == "gone" else CopyState(state))

    # -- waiting ---------------------------------------------------------------------------------------
    async def wait(self, model: str | None, timeout: float) -> None:
        """Wait until something about `model` changes, a slot frees up (model None: only that), or timeout."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        bucket = self._slot_waiters if model is None else self._waiters.setdefault(model, [])
        bucket.append(fut)
        if model is not None:
            self._slot_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                bucket.remove(fut)
            if model is not None:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(fut)
            if model is not None and not self._waiters.get(model):
                self._waiters.pop(model, None)

    def notify(self, model: str) -> None:
        self._notify(model)

    def _notify(self, model: str) -> None:
        for fut in self._waiters.get(model, ()):
            if not fut.done():
                fut.set_result(None)

    def _notify_slots(self) -> None:
        for fut in self._slot_waiters:
            if not fut.done():
                fut.set_result(None)

    def _notify_all(self) -> None:
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        self._notify_slots()


def _replicated(spec: ModelSpec) -> bool:
    return spec.min_copies > 0 or spec.max_copies > 1


class ViewSync:
    """Keeps a `PlacementView` equal to Redis: snapshot, then pub/sub events, then snapshot again on trouble.

    The event connection is checked with a PING every `heartbeat` seconds (0.25); no answer within
    `heartbeat_timeout` seconds (0.75: a paused Redis, a dead connection) counts as losing Redis: the view is kept
    and served, `health` is marked down, and the loop reconnects and resyncs. `on_name(name)` is told of every
    model or route event (None: the whole view was reloaded), so caches of names this gateway looked up can
    drop what the event may have changed (`placement.lookup`).

    What it costs grows with what changes, not with the registry: a periodic resync reads the models only when
    their mark (`ModelsMark`: a counter every model write bumps, and their count) moved since the view read them,
    and all of them anyway every `full_every`-th time (a backstop; pub/sub and the counter leave no known gap);
    events that arrive together (a bulk registration's thousands of `model` events) are applied together, their
    records read in one pipeline per `placement.store.registry.CHUNK` names.
    """

    def __init__(
        self,
        store: RedisStore,
        view: PlacementView,
        resync_interval: float = 30.0,
        health: RedisHealth | None = None,
        heartbeat: float = 0.25,
        heartbeat_timeout: float = 0.75,
        full_every: int = 10,
    ) -> None:
        self.store = store
        self.view = view
        self.resync_interval = resync_interval
        self.health = health or RedisHealth(SystemClock())
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.full_every = full_every
        self._resyncs = 0
        self.on_name: Callable[[str | None], None] = lambda name: None
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="modelyard-view-sync")
        await self.synced.wait()

    async def stop(self) -> None:
        await stop_task(self._task, self._stop)

    async def resync(self) -> None:
        self._resyncs += 1
        known = self.view.models_mark if self._resyncs % self.full_every else None
        self.view.load_snapshot(await self.store.snapshot(known))
        self.on_name(None)
        self.health.mark_up()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.store.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.events)
                # Subscribe first, then snapshot: every change after the snapshot arrives as an event.
                await self.resync()
                self.synced.set()
                backoff = 0.1
                await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: keep serving from the view, reconnect, resync.
                self.health.mark_down(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                log.debug("placement view lost Redis (%s); reconnecting in %.1f s", exc, backoff)
                await sleep_or_stop(self._stop, backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]

    async def _follow(self, pubsub: Any) -> None:
        """Apply events until the connection fails or a heartbeat goes unanswered (both raise)."""
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync_interval
        next_ping = loop.time()
        waiting_since: float | None = None
        while not self._stop.is_set():
            now = loop.time()
            if waiting_since is None and now >= next_ping:
                await pubsub.ping()
                waiting_since, next_ping = now, now + self.heartbeat
            msgs = await self._burst(pubsub)
            if not msgs and waiting_since is not None and loop.time() - waiting_since > self.heartbeat_timeout:
                # Judged only when nothing is left to read, so a stall of this process can't look like one of Redis.
                raise TimeoutError(f"Redis did not answer a PING within {self.heartbeat_timeout:g} s")
            events: list[dict[str, Any]] = []
            for msg in msgs:
                if msg.get("type") == "message":
                    events.append(json.loads(msg["data"]))
                elif msg.get("type") == "pong":
                    waiting_since = None
                    if not self.health.up:  # marked down by a failed command: Redis answers again, so catch up
                        await self._apply_all(events)  # first: older copy events must not land on the snapshot
                        events = []
                        await self.resync()
                        next_resync = loop.time() + self.resync_interval
                    self.health.heard()
            await self._apply_all(events)
            if loop.time() >= next_resync:
                await self.resync()
                next_resync = loop.time() + self.resync_interval

    async def _burst(self, pubsub: Any, most: int = 2000) -> list[dict[str, Any]]:
        """The next message (waiting up to a heartbeat for it), and those already arrived behind it."""
        msgs: list[dict[str, Any]] = []
        msg = await pubsub.get_message(timeout=self.heartbeat)
        while msg is not None:
            msgs.append(msg)
            if len(msgs) >= most:
                break
            msg = await pubsub.get_message(timeout=0.0)
        return msgs

    async def _apply_all(self, events: list[dict[str, Any]]) -> None:
        """Apply events in order, except that the models and routes they name are read together at the end (or
        before a backend event): one pipeline for a burst, not one round trip per name. Reading later is safe:
        an event only says "re-read it", and what is read is at least as new."""
        models: dict[str, None] = {}
        routes: dict[str, None] = {}
        for event in events:
            kind = event.get("t")
            if kind == "copy":
                self.view.apply_copy_event(event)
            elif kind == "backend":
                await self._read_named(models, routes)
                self.view.set_backend(event["b"], await self.store.get_backend(event["b"]))
            elif kind == "model":
                self.on_name(event["m"])
                models[event["m"]] = None
            elif kind == "lease":
                self.view.notify(event["m"])
            elif kind == "route":
                self.on_name(event["r"])
                routes[event["r"]] = None
        await self._read_named(models, routes)

    async def _read_named(self, models: dict[str, None], routes: dict[str, None]) -> None:
        if models:
            for name, spec in (await self.store.model_specs(list(models))).items():
                self.view.set_model(name, spec)
            models.clear()
        if routes:
            for name, route in (await self.store.routes_named(list(routes))).items():
                self.view.set_route(name, route)
            routes.clear()
