"""The one interface every runtime adapter implements.

Contract (edge cases included; placement relies on each line):

- `load(model)` returns once the backend reports the model ready, or raises `BackendLoadError` with the
  backend's reason, `BackendUnavailable` or `BackendTimeout`. Loading a model the backend already holds is
  allowed and leaves it ready.
- `unload(name)` returns once the backend no longer holds the model: the memory it used is free when it
  returns, so placement may give the slot to another model right after. Unloading a model the backend does
  not hold succeeds. Requests in flight on the backend may complete or fail with `ModelNotLoaded`.
- `loaded()` is the set of model names that hold memory on the backend now: ready, loading or still
  unloading (used by reconciliation, which must never free a slot the backend still uses).
- `healthy()` never raises: True when the backend answers its liveness/readiness check.
- `forward(request)` sends one data-plane request and returns the backend's answer byte for byte, whatever
  its status, except that an answer meaning "I don't hold this model" raises `ModelNotLoaded` (placement then
  retries once), and transport failures raise `BackendUnavailable` / `BackendTimeout`.
- Every call has a deadline; no call blocks forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What an adapter needs to load a model: its name on the backend and where its files come from."""

    name: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A data-plane request, protocol-neutral enough for any adapter.

    `protocol` is "kserve" (KServe v2 / Open Inference Protocol) or "tfserving" (TF Serving REST);
    `op` is the operation after the model part of the path: "infer", "ready", "" (metadata), "config",
    "stats" for KServe; "predict", "classify", "regress", "" (status), "metadata" for TF Serving.
    `headers` are the ones worth passing on, lower-cased; `body` is never parsed.
    """

    protocol: str
    method: str
    model: str
    version: str | None
    op: str
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ForwardResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class RuntimeAdapter(Protocol):
    """Talks to one backend server. Implementations: `adapters.triton.TritonAdapter`."""

    backend_id: str

    async def load(self, model: LoadRequest) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def loaded(self) -> set[str]: ...

    async def healthy(self) -> bool: ...

    async def forward(self, request: ForwardRequest) -> ForwardResponse: ...

    async def aclose(self) -> None: ...
