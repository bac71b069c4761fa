"""Copies that follow demand: more copies of a busy model, up to `max_copies`; fewer when it cools down.

Decided by one gateway at a time, the reconcile leader (`Reconciler.reconcile`), from the request counts every
gateway adds to Redis with its batched last-used writes (`p:requests`, see `placement.usage`): the warm path
stays free of Redis. Each round:

- a model's rate is its requests since the last round over the time since then (the injected clock);
- when the rate per ready copy is over `scale_up_rate` and the model has fewer than `max_copies`, one more copy
  is loaded, on a backend that holds none (`Loader.ensure_copies`; copies are always on distinct backends);
- when, with one copy fewer, the rate per copy would still be under `scale_up_rate * scale_down_ratio`, for
  `scale_down_rounds` rounds in a row, and the model has more than `max(min_copies, 1)` copies, one is
  unloaded (the least busy here, on the fullest backend). The gap between the two lines and the rounds are
  the hysteresis: removing a copy can't push the others over the line that adds one.

The last copy is never removed here (LRU eviction decides about it), and neither are `min_copies`. A model's
`max_copies` lowered below its copies sheds the extra ones in the next round. A gateway that just became the
leader (or whose last round is older than three reconcile intervals) only takes its baseline.
"""

from __future__ import annotations

import logging

from placement.clock import Clock
from placement.errors import PlacementError
from placement.loader import Loader
from placement.records import CopyState, ModelSpec
from placement.settings import PlacementSettings
from placement.store import RedisStore
from placement.view import PlacementView

log = logging.getLogger("modelyard.scaling")


class CopyScaler:
    def __init__(
        self, store: RedisStore, view: PlacementView, loader: Loader, settings: PlacementSettings, clock: Clock
    ) -> None:
        self.store = store
        self.view = view
        self.loader = loader
        self.settings = settings
        self.clock = clock
        self._last: tuple[float, dict[str, int]] | None = None
        self._cool: dict[str, int] = {}  # rounds in a row a model could have done with one copy fewer
        self.ups = 0
        self.downs = 0

    def decide(self, spec: ModelSpec, rate: float, ready: int) -> int:
        """+1 (add a copy), -1 (remove one) or 0, for a model with `ready` copies serving `rate` requests/s."""
        up = self.settings.scale_up_rate
        if ready == 0 or up <= 0:
            self._cool.pop(spec.name, None)
            return 0
        if ready > spec.max_copies and ready > max(spec.min_copies, 1):
            return -1
        if ready < spec.max_copies and rate / ready > up:
            self._cool.pop(spec.name, None)
            return 1
        if ready > max(spec.min_copies, 1) and rate / (ready - 1) < up * self.settings.scale_down_ratio:
            rounds = self._cool[spec.name] = self._cool.get(spec.name, 0) + 1
            if rounds >= self.settings.scale_down_rounds:
                del self._cool[spec.name]
                return -1
            return 0
        self._cool.pop(spec.name, None)
        return 0

    async def run(self) -> None:
        """One round: read the counts, compare with the last round, add or remove at most one copy per model."""
        if self.settings.scale_up_rate <= 0:
            return
        counts = await self.store.request_counts()
        now = self.clock.now()
        last, self._last = self._last, (now, counts)
        if last is None or now <= last[0] or now - last[0] > 3 * self.settings.reconcile_interval:
            return  # a first round, or a baseline too old to say how busy a model is now
        seconds = now - last[0]
        for name in sorted(self.view.replicated):  # the models that may have more than one copy, not all
            spec = self.view.models.get(name)
            if spec is None or (spec.max_copies <= 1 and spec.min_copies <= 1):
                continue
            rate = max(0, counts.get(name, 0) - last[1].get(name, 0)) / seconds
            ready = self.view.ready_backends(name)
            step = self.decide(spec, rate, len(ready))
            if step > 0 and not self._room_elsewhere(spec):
                continue  # every usable backend of its runtime holds a copy already
            try:
                if step > 0:
                    log.info("%s serves %.1f req/s on %d copies: adding one", name, rate, len(ready))
                    if await self.loader.ensure_copies(name, len(ready) + 1) > len(ready):
                        self.ups += 1
                elif step < 0:
                    log.info("%s serves %.1f req/s on %d copies: removing one", name, rate, len(ready))
                    if await self._remove_one(name, ready):
                        self.downs += 1
            except PlacementError as exc:
                log.warning("cannot scale %s: %s", name, exc)

    def _room_elsewhere(self, spec: ModelSpec) -> bool:
        held = self.view.copies.get(spec.name, {})
        return any(
            rec.spec.kind == spec.runtime and bid not in held and self.view.usable(bid)
            for bid, rec in self.view.backends.items()
        )

    async def _remove_one(self, name: str, ready: list[str]) -> bool:
        def fullness(bid: str) -> int:
            return sum(1 for held in self.view.copies.values() if bid in held and held[bid] is not CopyState.FAILED)

        victim = min(ready, key=lambda b: (self.loader.usage.inflight(name, b), -fullness(b), b))
        return await self.loader.unload_copy(name, victim, reason="scale-down")
