"""Refresh models whose source changed, every `--source-poll-interval` seconds (off by default).

One gateway at a time polls (the `__source_poll__` lease, left to expire after one interval, as reconciliation
does). For each model registered with a source and ready somewhere, each ready copy's adapter is asked whether
the copy came from the current version of the source (`adapters.base.SourceAware`; Triton compares the identity
it put in the model's config with the source's listing now); the first stale copy makes the model refreshed, as
`POST /admin/models/{name}/refresh` would. A source that can't be read is logged and tried again next time: the
loaded copies keep serving.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.base import LoadRequest, SourceAware
from adapters.errors import BackendError
from adapters.sources import SourceError
from placement.records import CopyState
from placement.registry import Registry
from placement.tasks import sleep_or_stop, stop_task

log = logging.getLogger("modelyard.sources")

LEASE = "__source_poll__"


class SourcePoller:
    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        self.placer = registry.placer
        self.interval = interval
        self.refreshes = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="modelyard-source-poll")

    async def stop(self) -> None:
        await stop_task(self._task, self._stop)

    async def _run(self) -> None:
        while not await sleep_or_stop(self._stop, self.interval):
            try:
                token = await self.placer.store.lease_try(LEASE, int(self.interval * 1000))
                if token is not None:
                    await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("source poll failed: %s", exc)

    async def poll_once(self) -> list[str]:
        """Look at every model with a source once; returns the models refreshed."""
        refreshed = []
        for name, spec in sorted(self.placer.view.models.items()):
            if spec.source is None:
                continue
            for c in await self.placer.store.copies_of(name):
                if c.state is not CopyState.READY:
                    continue
                try:
                    adapter = self.placer.adapter(c.backend)
                    if not isinstance(adapter, SourceAware):
                        continue
                    changed = await adapter.source_changed(LoadRequest(name, spec.source))
                except (SourceError, BackendError, KeyError) as exc:
                    log.warning("source poll: cannot tell whether %s on %s is current: %s", name, c.backend, exc)
                    continue
                if changed:
                    log.info("source of %s changed: refreshing it", name)
                    result = await self.registry.refresh_model(name)
                    if result.get("refresh_failed"):
                        log.warning("refresh of %s failed on %s", name, result["refresh_failed"])
                    self.refreshes += 1
                    refreshed.append(name)
                    break
        return refreshed
