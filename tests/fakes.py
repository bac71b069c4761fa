"""A fake backend below the adapter interface, for placement tests that are about placement's own logic.

Tests of behaviour that depends on the real runtime use real Triton (tests/gateway, tests/localstack).
The fake keeps what a backend holds and checks, at every load, that capacity is never exceeded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from adapters.base import ForwardRequest, ForwardResponse, LoadRequest
from adapters.errors import BackendLoadError, ModelNotLoaded


class FakeBackend:
    """The state of one fake server, shared by every adapter (gateway) that talks to it."""

    def __init__(self, backend_id: str, capacity: int) -> None:
        self.id = backend_id
        self.capacity = capacity
        self.held: set[str] = set()
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.max_held = 0
        self.fail: dict[str, str] = {}  # model -> reason its load fails with
        self.load_delay = 0.0
        self.gate: asyncio.Event | None = None  # when set, loads wait for it
        self.up = True  # what its health check answers

    def note(self) -> None:
        self.max_held = max(self.max_held, len(self.held))
        assert len(self.held) <= self.capacity, f"{self.id} holds {sorted(self.held)} over capacity {self.capacity}"


class FakeAdapter:
    def __init__(self, backend: FakeBackend) -> None:
        self.backend_id = backend.id
        self.b = backend

    async def load(self, model: LoadRequest) -> None:
        if self.b.gate is not None:
            await self.b.gate.wait()
        if self.b.load_delay:
            await asyncio.sleep(self.b.load_delay)
        self.b.loads.append(model.name)
        if model.name in self.b.fail:
            raise BackendLoadError(self.b.fail[model.name], self.b.id)
        self.b.held.add(model.name)
        self.b.note()

    async def unload(self, name: str) -> None:
        self.b.unloads.append(name)
        self.b.held.discard(name)

    async def loaded(self) -> set[str]:
        return set(self.b.held)

    async def healthy(self) -> bool:
        return self.b.up

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        if request.model not in self.b.held:
            raise ModelNotLoaded(f"{self.b.id} does not hold {request.model}", self.b.id)
        return ForwardResponse(200, [("content-type", "text/plain")], f"{request.model}@{self.b.id}".encode())

    async def aclose(self) -> None:
        return None


def record_forwards(
    monkeypatch: pytest.MonkeyPatch,
    adapter_class: type[Any],
    before: Callable[[Any, ForwardRequest], Awaitable[None]] | None = None,
) -> list[ForwardRequest]:
    """Every request `adapter_class.forward` is given, in order; `before(adapter, request)` runs first (it may
    raise, as a backend would), then the real `forward`."""
    seen: list[ForwardRequest] = []
    original = adapter_class.forward

    async def forward(self: Any, request: ForwardRequest) -> ForwardResponse:
        seen.append(request)
        if before is not None:
            await before(self, request)
        response: ForwardResponse = await original(self, request)
        return response

    monkeypatch.setattr(adapter_class, "forward", forward)
    return seen
