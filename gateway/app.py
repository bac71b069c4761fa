"""Wiring: one gateway = Redis store + placement + data plane + front ends. No I/O until `start()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapters.base import RuntimeAdapter
from adapters.factory import make_adapter
from adapters.sources import ModelSources
from gateway.admin import build_admin_app
from gateway.dataplane import DataPlane
from gateway.grpc_dataplane import GrpcDataPlane
from gateway.http_dataplane import HttpDataPlane, Receive, Scope, Send
from gateway.metrics import Metrics
from gateway.settings import Settings
from placement.clock import Clock, SystemClock
from placement.placer import Placer
from placement.records import BackendSpec
from placement.registry import Registry
from placement.routes import RouteRegistry
from placement.served import ServedLists
from placement.source_poll import SourcePoller
from placement.store import RedisStore

log = logging.getLogger("modelyard")


class Gateway:
    def __init__(
        self,
        settings: Settings,
        redis_client: aioredis.Redis,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
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
        self.metrics = Metrics(registry or CollectorRegistry())
        self.metrics.watch("placement", self._placement_metrics)
        self.metrics.watch("sources", self._source_metrics)
        self.placer.loader.events.on_load = self.metrics.load_seconds.observe
        self.placer.loader.events.on_eviction = self.metrics.eviction_idle.observe
        self.dataplane = DataPlane(self.placer, settings, self.metrics)
        self.http = HttpDataPlane(self.dataplane, self.metrics, settings.max_body_bytes)
        self.grpc = GrpcDataPlane(self.dataplane, self.metrics)  # served by gateway.server on --grpc-port
        self.admin = build_admin_app(self.registry, self.routes, self.dataplane, self.metrics, settings.admin_token)
        self._starting: asyncio.Task[None] | None = None

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
            await self.admin(scope, receive, send)

    async def start(self) -> None:
        """Sync with Redis (retrying until it answers) and start the background work."""
        await self.placer.start()
        self.source_poller.start()
        self.dataplane.ready = True
        log.info(
            "placement synced with Redis: %d backends, %d models",
            len(self.placer.view.backends),
            len(self.placer.view.models),
        )

    def start_in_background(self) -> None:
        self._starting = asyncio.create_task(self.start())

    async def stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        await self.dataplane.aclose()
        await self.source_poller.stop()
        await self.placer.stop()
        await self.redis.aclose()

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

    def _placement_metrics(self) -> Iterator[Any]:
        ev = self.placer.loader.events
        scaler = self.placer.reconciler.scaler
        for name, value, doc in (
            ("modelyard_loads", ev.loads, "Model loads this gateway completed."),
            ("modelyard_load_failures", ev.load_failures, "Model loads that failed."),
            ("modelyard_evictions", ev.evictions, "Copies this gateway evicted to make room."),
            ("modelyard_unloads", ev.unloads, "Copies this gateway unloaded (evictions, admin, drain)."),
            ("modelyard_load_joins", ev.joined, "Requests that joined a load already under way."),
            ("modelyard_copies_added", scaler.ups, "Copies this gateway added to busy models (as reconcile leader)."),
            ("modelyard_copies_removed", scaler.downs, "Copies this gateway removed from models that cooled down."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        calls = CounterMetricFamily("modelyard_redis_calls", "Redis calls by kind.", labels=["kind"])
        for kind, n in sorted(self.store.calls.items()):
            calls.add_metric([kind], n)
        yield calls
        loaded = GaugeMetricFamily(
            "modelyard_backend_models", "Copies per backend as this gateway sees them.", labels=["backend"]
        )
        for bid in self.placer.view.backends:
            n = sum(1 for held in self.placer.view.copies.values() if bid in held)
            loaded.add_metric([bid], n)
        yield loaded
        yield GaugeMetricFamily(
            "modelyard_inflight", "Requests in flight to backends.", value=self.placer.usage.total_inflight()
        )
