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
- gRPC protocols (`protocol` ending in "-grpc", e.g. "kserve-grpc") go through the same `forward`:
  `method` is the full gRPC method path ("/inference.GRPCInferenceService/ModelInfer"), `op` the RPC's name
  ("ModelInfer"), `body` the serialized request message exactly as the client sent it (with the model name
  already rewritten when another model answers), `headers` the client's metadata worth passing on (values of
  binary `-bin` keys as latin-1 strings, one character per byte), `timeout` the deadline of the backend call.
  The answer's `status` is the backend's gRPC status code number (0 = OK), `body` the serialized response
  message (empty unless OK), `details` the backend's status message, `headers` its initial metadata.
  "I don't hold this model", transport failures and the deadline raise as for HTTP; a backend that has no
  gRPC endpoint raises `BackendUnavailable` naming it. The backend's other gRPC errors are answers, not
  exceptions: they pass through to the client with their code and details.
- Every call has a deadline; no call blocks forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What an adapter needs to load a model: its name on the backend and where its files come from."""

    name: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A data-plane request, protocol-neutral enough for any adapter.

    `protocol` is "kserve" (KServe v2 / Open Inference Protocol) or "tfserving" (TF Serving REST) over HTTP,
    or "kserve-grpc" (`inference.GRPCInferenceService`) over gRPC ("tfserving-grpc" when it lands).
    For HTTP, `method` is the HTTP method and `op` the operation after the model part of the path: "infer",
    "ready", "" (metadata), "config", "stats" for KServe; "predict", "classify", "regress", "" (status),
    "metadata" for TF Serving. For gRPC, `method` is the full method path and `op` the RPC name (see the
    module docstring). `headers` are the ones worth passing on, lower-cased; `body` is never parsed here.
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
    """The backend's answer. HTTP: `status` is the HTTP status. gRPC: `status` is the gRPC status code number
    (0 = OK), `details` the status message, `headers` the initial metadata."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    details: str = ""


class RuntimeAdapter(Protocol):
    """Talks to one backend server. Implementations: `adapters.triton.TritonAdapter`."""

    backend_id: str

    async def load(self, model: LoadRequest) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def loaded(self) -> set[str]: ...

    async def healthy(self) -> bool: ...

    async def forward(self, request: ForwardRequest) -> ForwardResponse: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SourceAware(Protocol):
    """Optional, for adapters that send a model's files from its source themselves (Triton):
    `source_changed(model)` is True when the copy loaded on the backend came from another version of the source
    than the current one (so `refresh` would swap it), False when it is current or not loaded there."""

    async def source_changed(self, model: LoadRequest) -> bool: ...


class BackendStream(Protocol):
    """One bidirectional gRPC stream to a backend (`StreamingAdapter.open_stream`), messages as raw bytes.

    `write` sends a request message; `done_writing` half-closes (the backend finishes what it has and ends);
    iterating yields each response message as it arrives, until the backend ends the stream; `status()` is then
    (gRPC status number, details), 0 when it ended OK; `cancel` ends it at once, both ways.
    """

    async def write(self, message: bytes) -> None: ...

    async def done_writing(self) -> None: ...

    def responses(self) -> AsyncIterator[bytes]: ...

    async def status(self) -> tuple[int, str]: ...

    def cancel(self) -> None: ...


@runtime_checkable
class StreamingAdapter(Protocol):
    """Optional, for adapters whose backends stream over gRPC (Triton's `ModelStreamInfer`).

    `open_stream(method, headers, timeout)` opens a stream on the full method path with the client's metadata
    worth passing on and a deadline (None: none but the backend's own). Raises `BackendUnavailable` when the
    backend has no gRPC endpoint.
    """

    def open_stream(self, method: str, headers: list[tuple[str, str]], timeout: float | None) -> BackendStream: ...


@runtime_checkable
class HttpStreamingAdapter(Protocol):
    """Optional, for adapters whose backends answer some HTTP requests as a stream (Triton's
    `generate_stream`): `stream_http(request)` is an async context manager giving the answer's status and
    headers, then its body chunk by chunk as the backend writes it (`adapters.http_stream.StreamedResponse`)."""

    def stream_http(self, request: ForwardRequest) -> AbstractAsyncContextManager[Any]: ...
