"""Passive outlier ejection, Envoy-style: what one gateway's data plane saw of each backend.

`consecutive_failures` gateway failures in a row from a backend (connections refused or dropped, and answers 502,
503, 504 or gRPC UNAVAILABLE: Envoy's `consecutive_gateway_failure`, less timeouts) eject it from this gateway's
rotation for `base_ejection` seconds times the number of times it was ejected (capped at `max_ejection`); a
success resets the streak, and a backend that stays clean for `max_ejection` seconds after its ejection ended
starts from one again. At most `max_ejection_percent` of the backends are ejected at once (at least one), so a
fault that makes every backend answer 5xx (a bad model, an overloaded fleet) doesn't take them all away.

A 500 or a timeout is not counted: it is usually one model's own error or slowness, and one model must not take
a backend that serves many others out of rotation.

This is local and fast (no Redis): it decides where this gateway sends requests, never what Redis says a
backend holds. Removing a dead backend's copies from the placement is the reconcile leader's job
(`placement.reconcile`), on its active health checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from placement.clock import Clock

_HTTP_GATEWAY_FAILURES = frozenset({502, 503, 504})
_GRPC_UNAVAILABLE = 14


def gateway_failure(protocol: str, status: int) -> bool:
    """Whether a backend's answer counts against it: the server or its proxy failed, not the request."""
    return status == _GRPC_UNAVAILABLE if protocol.endswith("-grpc") else status in _HTTP_GATEWAY_FAILURES


@dataclass(slots=True)
class _Outlier:
    streak: int = 0
    ejections: int = 0
    until: float = 0.0


class OutlierEjector:
    def __init__(
        self,
        clock: Clock,
        consecutive_failures: int = 5,
        base_ejection: float = 30.0,
        max_ejection: float = 300.0,
        max_ejection_percent: float = 50.0,
    ) -> None:
        self.clock = clock
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.max_ejection_percent = max_ejection_percent
        self._seen: dict[str, _Outlier] = {}
        # Called with the backend id and the ejection's length in seconds at each ejection (metrics, logs).
        self.on_eject: Callable[[str, float], None] | None = None

    def record(self, backend: str, ok: bool, total_backends: int) -> bool:
        """Note one outcome of a request to `backend`; True when this outcome ejected it."""
        o = self._seen.setdefault(backend, _Outlier())
        now = self.clock.now()
        if ok:
            o.streak = 0
            if o.ejections and now > o.until + self.max_ejection:
                o.ejections = 0  # clean for long enough: the next ejection is short again
            return False
        o.streak += 1
        if o.streak < self.consecutive_failures or now < o.until:
            return False
        if self.ejected_count() >= self._cap(total_backends):
            return False
        o.ejections += 1
        o.streak = 0
        seconds = min(self.base_ejection * o.ejections, self.max_ejection)
        o.until = now + seconds
        if self.on_eject is not None:
            self.on_eject(backend, seconds)
        return True

    def ejected(self, backend: str) -> bool:
        o = self._seen.get(backend)
        return o is not None and self.clock.now() < o.until

    def ejected_count(self) -> int:
        now = self.clock.now()
        return sum(1 for o in self._seen.values() if now < o.until)

    def forget(self, backend: str) -> None:
        self._seen.pop(backend, None)

    def _cap(self, total_backends: int) -> int:
        return max(1, math.floor(total_backends * self.max_ejection_percent / 100))
