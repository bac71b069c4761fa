"""The admin API's read answers built from this gateway's view alone, for while Redis is unreachable.

The view mirrors the registry (backends, models, routes) and where copies are and in what state; it lacks
what only Redis keeps: last-used times, load counts, the last error. Those fields are null here. Every answer
carries `"source": "view"` (and the admin API adds the header `x-modelyard-source: view`), so a reader knows
it may be stale since the time in `"stale_since"`.
"""

from __future__ import annotations

from typing import Any

from placement.errors import NotFound
from placement.records import CopyState, check_name
from placement.view import PlacementView

MAX_PAGE = 1000


class ViewAnswers:
    def __init__(self, view: PlacementView) -> None:
        self.view = view

    def _held(self, backend: str) -> list[tuple[str, CopyState]]:
        return sorted((m, held[backend]) for m, held in self.view.copies.items() if backend in held)

    def backend(self, backend_id: str) -> dict[str, Any]:
        rec = self.view.backends.get(check_name("backend", backend_id))
        if rec is None:
            raise NotFound(f"backend {backend_id!r} is not registered (as this gateway's view has it)")
        held = [(m, s) for m, s in self._held(backend_id) if s.holds_slot]
        out = rec.spec.to_json()
        out["healthy"] = self.view.reachable.get(backend_id, rec.healthy)
        out["draining"] = rec.draining
        memory = sum(spec.memory_bytes for m, _ in held if (spec := self.view.models.get(m)) is not None)
        out["used"] = {"models": len(held), "memory_bytes": memory}
        out["models"] = [m for m, s in held if s is CopyState.READY]
        return out

    def backends(self) -> list[dict[str, Any]]:
        return [self.backend(b) for b in sorted(self.view.backends)]

    def model(self, name: str) -> dict[str, Any]:
        spec = self.view.models.get(check_name("model", name))
        if spec is None:
            raise NotFound(f"model {name!r} is not registered (as this gateway's view has it)")
        out = spec.to_json()
        copies = sorted(self.view.copies.get(name, {}).items())
        out["copies"] = [{"backend": b, "state": s.value} for b, s in copies]
        out["last_used"] = None
        out["loads"] = None
        out["last_error"] = None
        return out

    def models(self, limit: int, cursor: str | None) -> dict[str, Any]:
        if limit < 1 or limit > MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        names = sorted(n for n in self.view.models if cursor is None or n > cursor)
        page = names[:limit]
        more = len(names) > limit
        return {"models": [self.model(n) for n in page], "next_cursor": page[-1] if more and page else None}

    def route(self, name: str) -> dict[str, Any]:
        spec = self.view.routes.get(check_name("route", name))
        if spec is None:
            raise NotFound(f"route {name!r} is not registered (as this gateway's view has it)")
        return spec.to_json()

    def routes(self) -> list[dict[str, Any]]:
        return [self.view.routes[n].to_json() for n in sorted(self.view.routes)]

    def placement(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for bid, rec in sorted(self.view.backends.items()):
            record = self.backend(bid)
            out[bid] = {
                "kind": rec.spec.kind,
                "healthy": record["healthy"],
                "draining": rec.draining,
                "capacity": rec.spec.capacity.to_json(),
                "used": record["used"],
                "models": [{"name": m, "state": s.value, "last_used": None} for m, s in self._held(bid)],
            }
        return {"backends": out}
