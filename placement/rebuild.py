"""Rebuilding Redis after it lost data, from the gateways' views and from what the backends hold.

Redis holds a generation id (`placement.store`, written once into an empty Redis). A gateway notices a loss
when a snapshot carries no generation or another one (`PlacementView.load_snapshot`, on every resync and
reconnection) or when the reconciler's periodic look at the generation key disagrees with its view. Until the
rebuild is done the view keeps what it had, so warm requests go on being served from it.

The rebuild, run by every gateway that noticed (each step is idempotent, so several at once are fine):

1. re-seed the registry: every backend, model and route of the view, and every tombstone the view knows, with
   its version; the store's script keeps, per record, the highest version seen, deletes included, so a gateway
   whose view is stale can't bring back what another deleted, as long as some gateway that knows of the delete
   (its tombstone) re-seeds too;
2. write a new generation id (the first gateway wins; the others adopt its id);
3. adopt copies: each reachable backend is asked what it holds (`adopt_backend`), and each model it holds that
   is registered for its runtime is recorded as a ready copy while it fits the backend's capacity, so nothing
   that serves is loaded or unloaded again and the capacity accounting matches the backends. Held models that
   are not registered, or over capacity, are unloaded (Triton; TF Serving's list is the desired set, sent anew
   by `placement.served`).

Limits, said plainly: a delete made through a gateway that is gone (or restarted) before the loss, and whose
tombstone no snapshot of a surviving gateway carries, can be undone by a stale view; a record changed in the
last instant before the loss through a gateway that died is lost; versions are the writers' wall clocks, so
two writes of one record within the gateways' clock skew may keep the older one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from adapters.base import RuntimeAdapter
from placement.clock import Clock
from placement.records import BackendSpec, CopyState, ModelSpec, RouteSpec
from placement.store import RedisStore
from placement.view import PlacementView

log = logging.getLogger("modelyard.rebuild")


@dataclass(slots=True)
class RebuildReport:
    seeded: int = 0
    tombstones: int = 0
    adopted: int = 0
    unloaded: int = 0


class Rebuilder:
    def __init__(
        self, store: RedisStore, view: PlacementView, adapters: Callable[[str], RuntimeAdapter], clock: Clock
    ) -> None:
        self.store = store
        self.view = view
        self.adapter = adapters
        self.clock = clock
        self.rebuilds = 0  # completed rebuilds, for metrics and tests
        self._task: asyncio.Task[RebuildReport] | None = None

    def trigger(self) -> asyncio.Task[RebuildReport]:
        """Start a rebuild unless one runs; returns the running one."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="modelyard-rebuild")
        return self._task

    async def check(self) -> None:
        """A cheap look at the generation key (one GET): a loss without a reconnection (FLUSHALL) shows here."""
        if self.view.generation is not None and await self.store.generation() != self.view.generation:
            await self.trigger()

    async def _run(self) -> RebuildReport:
        try:
            report = await self.rebuild()
        except Exception as exc:  # Redis went away again: the next resync or health round notices and retries
            log.warning("rebuilding Redis failed (%s); it is tried again at the next look", exc)
            return RebuildReport()
        self.rebuilds += 1
        return report

    async def rebuild(self) -> RebuildReport:
        report = RebuildReport()
        had_registry = bool(self.view.backends or self.view.models or self.view.routes)
        await self._seed(report)
        generation = await self.store.ensure_generation()
        # Copies are adopted before the view takes the new snapshot, so warm requests never see them missing.
        for bid in sorted(self.view.backends):
            if self.view.reachable.get(bid) is False:
                continue
            try:
                await self.adopt_backend(bid, report, ask_registered=True)
            except Exception as exc:  # one unreachable backend must not stop the others
                log.warning("adopting what %s holds failed: %s", bid, exc)
        self.view.generation = generation
        self.view.load_snapshot(await self.store.snapshot())
        if had_registry:
            log.warning(
                "Redis had lost its data (generation now %s): rebuilt %d records and %d tombstones from this "
                "gateway's view, adopted %d copies the backends hold, unloaded %d",
                generation,
                report.seeded,
                report.tombstones,
                report.adopted,
                report.unloaded,
                extra={"event": "rebuild", "generation": generation},
            )
        return report

    async def _seed(self, report: RebuildReport) -> None:
        records: list[tuple[str, str, BackendSpec | ModelSpec | RouteSpec]] = [
            *(("backend", b, r.spec) for b, r in self.view.backends.items()),
            *(("model", m, s) for m, s in self.view.models.items()),
            *(("route", n, s) for n, s in self.view.routes.items()),
        ]
        # Models before routes: a route names models; backends first so copies can be adopted right after.
        for kind, name, spec in records:
            # Version 0 (unknown) still seeds an absent record, and loses to any known write or delete.
            ver = max(self.view.versions.get(f"{kind}:{name}", 0), 1)
            if await self.store.seed(kind, name, ver, spec) == "seeded":
                report.seeded += 1
        for key, ver in list(self.view.tombstones.items()):
            kind, _, name = key.partition(":")
            if await self.store.seed(kind, name, ver, None) != "kept":
                report.tombstones += 1

    async def adopt_backend(self, bid: str, report: RebuildReport | None = None, ask_registered: bool = False) -> None:
        """Make Redis's copies on `bid` include what the backend holds: adopt registered models within capacity,
        unload the rest (see the module docstring). Copies Redis has that the backend lacks are reconciliation's.
        `ask_registered`: also ask a list-configured backend (TF Serving) about each registered model of its
        runtime, one RPC each (after a loss, when the lists its `loaded()` reads are gone).
        While Redis is being rebuilt (by any gateway: this one's generation is not Redis's), nothing is unloaded:
        a model may be missing only because its record is not re-seeded yet."""
        report = report if report is not None else RebuildReport()
        settled = self.view.generation is not None and await self.store.generation() == self.view.generation
        adapter = self.adapter(bid)
        # Redis first, then the backend: a copy reserved after the listing is 'exists' to the script.
        known = {c.model for c in await self.store.copies_on(bid) if c.state is not CopyState.FAILED}
        kind = self.view.backends[bid].spec.kind if bid in self.view.backends else None
        holding = await adapter.loaded()
        among = getattr(adapter, "loaded_among", None) if ask_registered else None
        if among is not None:  # a list-configured backend (TF Serving) is asked about every registered model
            holding |= await among([m for m, s in self.view.models.items() if s.runtime == kind])
        for model in sorted(holding - known):
            result = await self.store.adopt_held(bid, model, self.clock.now())
            if result == "ok":
                report.adopted += 1
                log.info("adopted %s on %s: the backend holds it", model, bid)
            elif (
                result in ("full", "unregistered")
                and kind == "triton"
                and settled
                and (result == "full" or model not in self.view.models)
            ):
                await adapter.unload(model)
                report.unloaded += 1
                log.warning("unloaded %s from %s: %s", model, bid, "over capacity" if result == "full" else result)
