"""Requests in flight and last-used times, kept in memory on the request path and flushed to Redis in batches.

The warm path only calls `start` and `finish`: two dictionary updates, no I/O. `drain` hands the flusher
every copy used since the last flush, plus every copy with a request still in flight (so a long request keeps
its model recent), each with the time it was last seen busy; `drain_requests` the requests finished per model
since the last flush (the reconcile leader turns their sums into rates to scale copies).
"""

from __future__ import annotations

from placement.clock import Clock


class Usage:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._inflight: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], float] = {}
        self._requests: dict[str, int] = {}
        self._finished: dict[str, float] = {}  # model -> its last request's end, since the last flush

    def start(self, model: str, backend: str) -> None:
        key = (model, backend)
        self._inflight[key] = self._inflight.get(key, 0) + 1

    def finish(self, model: str, backend: str) -> None:
        key = (model, backend)
        left = self._inflight.get(key, 0) - 1
        if left > 0:
            self._inflight[key] = left
        else:
            self._inflight.pop(key, None)
        now = self._clock.now()
        self._pending[key] = now
        self._requests[model] = self._requests.get(model, 0) + 1
        self._finished[model] = now

    def inflight(self, model: str, backend: str) -> int:
        return self._inflight.get((model, backend), 0)

    def total_inflight(self) -> int:
        return sum(self._inflight.values())

    def drain(self) -> list[tuple[str, str, float]]:
        now = self._clock.now()
        out = dict(self._pending)
        self._pending.clear()
        for key in self._inflight:
            out[key] = now
        return [(m, b, t) for (m, b), t in out.items()]

    def drain_requests(self) -> dict[str, int]:
        out, self._requests = self._requests, {}
        return out

    def drain_all(self) -> tuple[list[tuple[str, str, float]], dict[str, int], dict[str, float]]:
        """`drain`, `drain_requests` and `drain_finished` at once: one flush's arguments to `touch_many`."""
        return self.drain(), self.drain_requests(), self.drain_finished()

    def drain_finished(self) -> dict[str, float]:
        """Each model's last finished request since the last call: the arrivals the learned gaps are made of.
        Unlike `drain`, no in-flight refresh: a request still running at a flush is no new request."""
        out, self._finished = self._finished, {}
        return out
