"""Wiring: one gateway = Redis store + placement + data plane + front ends. No I/O until `start()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapters.base import RuntimeAdapter
from adapters.factory import make_adapter
from adapters.sources import ModelSources
from gateway.admin import build_admin_app
from gateway.dataplane import DataPlane
from gateway.grpc_dataplane import GrpcDataPlane
from gateway.http_dataplane import HttpDataPlane, Receive, Scope, Send
from gateway.logs import CURRENT, RequestScope
from gateway.metrics import LabelPolicy, Metrics
from gateway.observe import Observer
from gateway.settings import Settings
from gateway.stats import BackendStats
from gateway.tracing import Tracing
from placement.clock import Clock, SystemClock
from placement.placer import Placer
from placement.prewarm_task import PrewarmTask
from placement.records import BackendSpec
from placement.registry import Registry
from placement.rollouts import Rollouts
from placement.routes import RouteRegistry
from placement.served import ServedLists
from placement.source_poll import SourcePoller
from placement.store import RedisStore
from placement.tasks import sleep_or_stop, stop_task

log = logging.getLogger("modelyard")
METRICS_TICK = 10.0  # seconds between snapshots of per-backend counts (the placement page's rates)
RELABEL_EVERY = 6  # ticks between re-rankings of the names that get their own metric labels (a minute)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        redis_client: aioredis.Redis,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis_client
        self.clock = clock or SystemClock()
        # Model sources: one disk cache and one S3 client for all of this gateway's Triton adapters.
        self.sources = ModelSources(settings.sources)
        self.store = RedisStore(redis_client, settings.placement.redis_prefix)
        self.placer = Placer(self.store, self._adapter, settings.placement, self.clock)
        self.served = ServedLists(self.store, self.placer.view, settings.placement.lease_ttl)
        self.registry = Registry(self.placer)
        self.routes = RouteRegistry(self.registry)
        self.source_poller = SourcePoller(self.registry, settings.sources.poll_interval)
        self.metrics = Metrics(registry or CollectorRegistry(), LabelPolicy.parse(settings.metrics_models))
        ProcessCollector(registry=self.metrics.registry)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.metrics.watch("placement", self._placement_metrics)
        self.metrics.watch("sources", self._source_metrics)
        self.tracing = tracing or Tracing()
        self.stats = BackendStats()
        self.obs = Observer(self.metrics, self.tracing, self.stats)
        events = self.placer.loader.events
        events.on_load = self.obs.loaded
        events.on_unload = self.obs.unloaded
        events.on_eviction = self.obs.evicted
        events.on_join = self.obs.joined
        if self.tracing.enabled:
            events.wrap_load = self.tracing.wrap_load
        self.prewarm: PrewarmTask | None = None
        if settings.placement.prewarm:
            p = self.placer
            self.prewarm = PrewarmTask(self.store, p.view, p.loader, settings.placement, self.clock, health=p.health)
            self.prewarm.on_result = self.obs.prewarmed
        self.dataplane = DataPlane(self.placer, settings, self.metrics, obs=self.obs)
        self.http = HttpDataPlane(self.dataplane, self.metrics, settings.max_body_bytes)
        self.grpc = GrpcDataPlane(self.dataplane, self.metrics)  # served by gateway.server on --grpc-port
        self.rollouts = Rollouts(
            self.store,
            self.placer.view,
            self.dataplane.route_stats,
            self.clock,
            flush_interval=settings.placement.usage_flush_interval,
        )
        self.rollouts.on_state = self._rollout_state
        self.rollouts.on_end = lambda route, result: self.metrics.rollouts.child(route, result).inc()
        self.admin = build_admin_app(
            self.registry, self.routes, self.dataplane, self.metrics, settings.admin_token, self.stats, self.rollouts
        )
        self._starting: asyncio.Task[None] | None = None
        self._ticking: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _adapter(self, spec: BackendSpec) -> RuntimeAdapter:
        return make_adapter(
            spec.kind,
            spec.id,
            spec.url,
            spec.grpc_url,
            self.settings.placement.load_timeout,
            lists=self.served,
            model_base_path=spec.model_base_path,
            sources=self.sources,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and HttpDataPlane.handles(scope["path"]):
            await self.http(scope, receive, send)
        else:
            # Log lines of admin calls carry their request id (the caller's x-request-id, else a new one).
            token = CURRENT.set(RequestScope(scope.get("headers")))
            try:
                await self.admin(scope, receive, send)
            finally:
                CURRENT.reset(token)

    async def start(self) -> None:
        """Sync with Redis (retrying until it answers) and start the background work."""
        await self.placer.start()
        self.source_poller.start()
        self.dataplane.ready = True
        self._ticking = asyncio.create_task(self._tick(), name="modelyard-metrics")
        self.rollouts.start()
        if self.prewarm is not None:
            self.prewarm.start()
        log.info(
            "placement synced with Redis: %d backends, %d models",
            len(self.placer.view.backends),
            len(self.placer.view.models),
        )

    def drain(self) -> None:
        """SIGTERM: readiness answers 503 from now on (requests in flight finish)."""
        if not self.dataplane.draining:
            self.dataplane.draining = True
            log.info("draining: /readyz answers 503 while requests in flight finish")

    def start_in_background(self) -> None:
        self._starting = asyncio.create_task(self.start())

    async def stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        await stop_task(self._ticking, self._stop)
        await self.rollouts.stop()
        if self.prewarm is not None:
            await self.prewarm.stop()
        await self.dataplane.aclose()
        await self.source_poller.stop()
        await self.placer.stop()
        await self.redis.aclose()

    def _rollout_state(self, state: dict[str, Any]) -> None:
        weight = {"promoted": 100, "rolled_back": 0, "aborted": 0}.get(state["phase"], state["weight"])
        self.metrics.rollout_weight.child(state["route"], state["model"]).set(weight)

    def _source_metrics(self) -> Iterator[Any]:
        cache = self.sources.cache
        for name, value, doc in (
            ("modelyard_source_downloads", self.sources.downloads, "Files downloaded from model sources."),
            ("modelyard_source_downloaded_bytes", self.sources.downloaded_bytes, "Bytes downloaded from sources."),
            ("modelyard_model_cache_hits", cache.hits, "Loads from a source served by the disk cache."),
            ("modelyard_model_cache_misses", cache.misses, "Loads from a source that filled the disk cache."),
            ("modelyard_model_cache_evictions", cache.evictions, "Entries this gateway evicted from the cache."),
            ("modelyard_source_refreshes", self.source_poller.refreshes, "Refreshes the source poll started."),
        ):
            yield CounterMetricFamily(name, doc, value=value)

    async def _tick(self) -> None:
        """Every `METRICS_TICK` seconds a snapshot of the per-backend counts for the placement page's per-minute
        rates; every `RELABEL_EVERY` ticks, a re-ranking of the names that get their own metric labels."""
        ticks = 0
        while not await sleep_or_stop(self._stop, METRICS_TICK):
            ticks += 1
            try:
                self.stats.snapshot()
                if ticks % RELABEL_EVERY == 0:
                    dropped = self.metrics.rebalance()
                    if dropped:
                        log.debug("metrics: %d names lost their own label to busier ones", len(dropped))
            except Exception:  # a bug here must not stop the loop
                log.exception("metrics tick failed")

    def _placement_metrics(self) -> Iterator[Any]:
        """Values read at scrape time from this gateway's view of placement and its Redis client."""
        view = self.placer.view
        scaler = self.placer.reconciler.scaler
        for name, value, doc in (
            ("modelyard_copies_added", scaler.ups, "Copies this gateway added to busy models (as reconcile leader)."),
            ("modelyard_copies_removed", scaler.downs, "Copies this gateway removed from models that cooled down."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield from self._redis_metrics()
        calls = CounterMetricFamily("modelyard_redis_calls", "Redis calls by kind.", labels=["kind"])
        for kind, n in sorted(self.store.calls.items()):
            calls.add_metric([kind], n)
        yield calls
        copies = GaugeMetricFamily(
            "modelyard_backend_models",
            "Copies per backend and state (loading, ready, unloading, failed) as this gateway sees them.",
            labels=["backend", "state"],
        )
        held: dict[tuple[str, str], int] = {}
        for states in view.copies.values():
            for bid, copy_state in states.items():
                held[(bid, copy_state.value)] = held.get((bid, copy_state.value), 0) + 1
        cap_models = GaugeMetricFamily(
            "modelyard_backend_capacity_models", "How many models each backend may hold.", labels=["backend"]
        )
        cap_bytes = GaugeMetricFamily(
            "modelyard_backend_capacity_bytes",
            "How many bytes of models each backend may hold (backends registered with memory_bytes).",
            labels=["backend"],
        )
        healthy = GaugeMetricFamily(
            "modelyard_backend_healthy", "1 when this gateway can reach the backend, else 0.", labels=["backend"]
        )
        draining = GaugeMetricFamily(
            "modelyard_backend_draining", "1 while the backend is being drained (DELETE), else 0.", labels=["backend"]
        )
        for bid, rec in sorted(view.backends.items()):
            for state in ("loading", "ready", "unloading", "failed"):
                copies.add_metric([bid, state], held.get((bid, state), 0))
            cap_models.add_metric([bid], rec.spec.capacity.models)
            if rec.spec.capacity.memory_bytes is not None:
                cap_bytes.add_metric([bid], rec.spec.capacity.memory_bytes)
            healthy.add_metric([bid], 1.0 if view.reachable.get(bid, rec.healthy) else 0.0)
            draining.add_metric([bid], 1.0 if rec.draining else 0.0)
        yield from (copies, cap_models, cap_bytes, healthy, draining)
        yield GaugeMetricFamily("modelyard_models_registered", "Models registered.", value=len(view.models))
        yield GaugeMetricFamily(
            "modelyard_metrics_named_models",
            'Model names that have a label of their own in this gateway\'s metrics (the rest are model="_other").',
            value=self.metrics.models.chosen,
        )
        yield GaugeMetricFamily(
            "modelyard_inflight", "Requests in flight to backends.", value=self.placer.usage.total_inflight()
        )

    def _redis_metrics(self) -> Iterator[Any]:
        """Whether this gateway reaches Redis, how stale its view may be, and its lookups of unknown names."""
        health = self.placer.health
        yield GaugeMetricFamily(
            "modelyard_redis_up",
            "1 while this gateway reaches Redis, else 0 (it serves from its view).",
            value=health.up,
        )
        age = self.clock.now() - health.last_sync if health.last_sync is not None else float("nan")
        yield GaugeMetricFamily(
            "modelyard_view_sync_age_seconds",
            "Seconds since this gateway's view was last known equal to Redis (a snapshot or an answered heartbeat).",
            value=max(0.0, age) if age == age else age,
        )
        yield CounterMetricFamily(
            "modelyard_redis_outages", "Times this gateway found Redis unreachable.", value=health.outages
        )
        lookups = CounterMetricFamily(
            "modelyard_name_lookups",
            "Names not in this gateway's view, by result: found (read from Redis), unknown (not registered), "
            "cached (unknown, remembered), joined (shared a lookup under way), refused (over the lookup budget).",
            labels=["result"],
        )
        for result, n in self.placer.lookup.counts.as_dict().items():
            lookups.add_metric([result], n)
        yield lookups
