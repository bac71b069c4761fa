"""Adapter for TensorFlow Serving: model control through whole model lists, data plane over its REST API.

TF Serving has no load or unload call. Its only model control is `ModelService/HandleReloadConfigRequest`,
which REPLACES the served list: a model left out is unloaded. So this adapter never sends "load m"; it sends
the backend's full wanted list, which placement derives from Redis (`placement.served.ServedLists`: every copy
of the backend in loading or ready state), while holding the backend's list lease, so that no two gateways
send lists at once and no list can drop a model another gateway just loaded:

- `load(m)`: placement has already reserved m's copy (it is in the wanted list); send the list if it differs
  from the one last sent (or if the backend does not show m at all, e.g. after a restart), then poll
  `GetModelStatus` until a version of m is AVAILABLE, or fails (END with an error).
- `unload(m)`: placement has marked the copy unloading (it is out of the wanted list); send the list, then
  poll until no version of m is START/LOADING/AVAILABLE/UNLOADING, so the memory is free when it returns.
- `loaded()`: models of the wanted and last-sent lists that TF Serving reports in a state holding memory.
- `healthy()`: `GetModelStatus` of a name nobody registers answers NOT_FOUND when the server is up.
- `forward()`: the REST API byte for byte ("tfserving"), or a raw `PredictionService`/`ModelService` message
  over gRPC ("tfserving-grpc"); "Servable not found" for a model with no available version means "not here".

TF Serving answers a reload only after the NEW models of the list are available (or failed), so a reload can
take as long as a load; every call has a deadline. Version policy: the latest version under the base path
(TF Serving's default). Messages are modelyard's own wire-identical copies (`adapters.tfserving_proto`):
no TensorFlow is imported. See `adapters.base` for the contract.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol
from urllib.parse import quote

import grpc
import httpx

from adapters.base import ForwardRequest, ForwardResponse, LoadRequest
from adapters.errors import (
    BackendError,
    BackendLoadError,
    BackendTimeout,
    BackendUnavailable,
    ModelNotLoaded,
)
from adapters.grpc_forward import GrpcForwarder
from adapters.http_forward import error_text, forward_http, make_client
from adapters.tfserving_proto.messages import (
    MODEL_SERVICE,
    ModelEntry,
    VersionStatus,
    model_status_request,
    model_status_response,
    reload_config_request,
    reload_config_status,
)
from adapters.upstream import UpstreamPool

log = logging.getLogger("modelyard.tfserving")

# Version states that hold the server's memory (ModelVersionStatus.State).
_HOLDING = frozenset({"START", "LOADING", "AVAILABLE", "UNLOADING"})
_COMING = frozenset({"START", "LOADING", "AVAILABLE"})
_PROBE = "__modelyard_health_probe__"
_NOT_LOADED_MARKERS = ("servable not found for request", "could not find any versions of model")

Unary = Callable[..., Awaitable[bytes]]


class ModelLists(Protocol):
    """What this adapter needs from placement (implemented by `placement.served.ServedLists`)."""

    async def wanted(self, backend_id: str) -> list[tuple[str, str | None]]:
        """(model, source) of every model the backend should serve now."""
        ...

    def hold(self, backend_id: str, timeout: float) -> AbstractAsyncContextManager[int]:
        """The exclusive right to send the backend its list (a fencing token); TimeoutError after `timeout`."""
        ...

    async def sent(self, backend_id: str) -> str | None: ...

    async def record_sent(self, backend_id: str, token: int, value: str) -> bool: ...


class TFServingAdapter:
    """One TF Serving backend: `url` its REST endpoint (http://host:8501), `grpc_url` its gRPC one (host:8500)."""

    def __init__(
        self,
        backend_id: str,
        url: str,
        grpc_url: str,
        lists: ModelLists,
        *,
        model_base_path: str = "/models",
        load_timeout: float = 120.0,
        control_timeout: float = 30.0,
        poll_interval: float = 0.05,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.backend_id = backend_id
        self.url = url.rstrip("/")
        self.grpc_url = grpc_url
        self.lists = lists
        self.model_base_path = model_base_path.rstrip("/") or "/"
        self.load_timeout = load_timeout
        self.control_timeout = control_timeout
        self.poll_interval = poll_interval
        self._client = client or make_client()
        lean = client is None and self.url.startswith("http://")
        self._pool = UpstreamPool(backend_id, self.url) if lean else None
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Unary] = {}
        self._grpc = GrpcForwarder(backend_id, grpc_url)  # the data plane's gRPC calls

    async def aclose(self) -> None:
        await self._grpc.aclose()
        if self._pool is not None:
            self._pool.close()
        await self._client.aclose()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- gRPC model control ----------------------------------------------------------------------------
    def _unary(self, method: str) -> Unary:
        call = self._calls.get(method)
        if call is None:
            if self._channel is None:
                self._channel = grpc.aio.insecure_channel(
                    self.grpc_url, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
                )
            # No (de)serializers: requests and answers stay bytes, built and read by adapters.tfserving_proto.
            call = self._calls[method] = self._channel.unary_unary(f"/{MODEL_SERVICE}/{method}")
        return call

    async def _rpc(self, method: str, request: bytes, timeout: float) -> bytes:
        try:
            return await self._unary(method)(request, timeout=max(timeout, 0.001))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise BackendTimeout(
                    f"backend {self.backend_id} did not answer {method} within {timeout:.3g} s", self.backend_id
                ) from exc
            if code == grpc.StatusCode.UNAVAILABLE:
                raise BackendUnavailable(
                    f"backend {self.backend_id} could not be reached at {self.grpc_url}: {exc.details()}",
                    self.backend_id,
                ) from exc
            raise _RpcFailed(code, exc.details() or "") from exc

    async def versions(self, name: str, timeout: float | None = None) -> list[VersionStatus]:
        """TF Serving's version states of `name`; [] when it knows no version of it (NOT_FOUND)."""
        try:
            raw = await self._rpc("GetModelStatus", model_status_request(name), timeout or self.control_timeout)
        except _RpcFailed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return []
            raise BackendError(
                f"backend {self.backend_id}: GetModelStatus({name}) failed: {exc.code.name}: {exc.details}",
                self.backend_id,
            ) from exc
        return model_status_response(raw)

    def base_path(self, name: str, source: str | None) -> str:
        """Where TF Serving reads a model: its source, or `{model_base_path}/{name}` for source null."""
        if source is None:
            return f"{self.model_base_path.rstrip('/')}/{name}"
        if source.startswith("file://"):
            return source[len("file://") :]
        return source  # s3://... : TF Serving reads object stores itself

    async def _send_list(self, deadline: float, *, include: str | None, exclude: str | None, force: bool) -> None:
        """Send the backend its whole wanted list under the backend's list lease, unless it already has it."""
        try:
            async with self.lists.hold(self.backend_id, _left(deadline)) as token:
                wanted = dict(await self.lists.wanted(self.backend_id))
                if include is not None and include not in wanted:
                    # Placement reserves a copy before loading it, so this is a direct call (tests, tools).
                    wanted[include] = None
                wanted.pop(exclude or "", None)
                entries = [ModelEntry(n, self.base_path(n, src)) for n, src in sorted(wanted.items())]
                value = json.dumps([[e.name, e.base_path] for e in entries])
                if not force and value == await self.lists.sent(self.backend_id):
                    return
                try:
                    raw = await self._rpc("HandleReloadConfigRequest", reload_config_request(entries), _left(deadline))
                    code, message = reload_config_status(raw)
                except _RpcFailed as exc:
                    # TF Serving returns a failed reload as the call's status too (model_service_impl.cc).
                    code, message = exc.code.value[0], exc.details
                if code == 0:
                    if not await self.lists.record_sent(self.backend_id, token, value):
                        log.warning("%s: model-list lease lost while sending the list; not recorded", self.backend_id)
                else:
                    # TF Serving took the list, but a new model of it failed (or its base path is missing):
                    # each load reads its own model's state next. Not recorded, so the next change resends.
                    log.warning("%s: reload answered error %d: %s", self.backend_id, code, message)
        except TimeoutError as exc:
            raise BackendTimeout(str(exc), self.backend_id) from exc

    # -- the adapter interface -------------------------------------------------------------------------
    async def load(self, model: LoadRequest) -> None:
        deadline = time.monotonic() + self.load_timeout
        states = {v.state for v in await self.versions(model.name)}
        await self._send_list(deadline, include=model.name, exclude=None, force=not states & _COMING)
        while True:
            vs = await self.versions(model.name, _left(deadline))
            if any(v.state == "AVAILABLE" for v in vs):
                return
            failed = [v for v in vs if v.state == "END" and v.error_code != 0]
            if failed and not any(v.state in _COMING for v in vs):
                reason = failed[0].error_message or f"error code {failed[0].error_code}"
                # Out of the server's list again, so that a later load is a real retry, not a no-op.
                try:
                    await self._send_list(
                        time.monotonic() + self.control_timeout, include=None, exclude=model.name, force=True
                    )
                except BackendError as exc:
                    log.warning("%s: could not drop failed %s from the list: %s", self.backend_id, model.name, exc)
                raise BackendLoadError(
                    f"backend {self.backend_id} failed to load {model.name!r}: {reason}", self.backend_id
                )
            if time.monotonic() >= deadline:
                raise BackendTimeout(
                    f"backend {self.backend_id} did not make {model.name!r} available within "
                    f"{self.load_timeout:g} s (states: {sorted({v.state for v in vs}) or 'none'})",
                    self.backend_id,
                )
            await asyncio.sleep(self.poll_interval)

    async def unload(self, name: str) -> None:
        deadline = time.monotonic() + self.control_timeout
        await self._send_list(deadline, include=None, exclude=name, force=True)
        while True:
            vs = await self.versions(name, _left(deadline))
            if not any(v.state in _HOLDING for v in vs):
                return
            if time.monotonic() >= deadline:
                raise BackendTimeout(
                    f"backend {self.backend_id} still holds {name!r} {self.control_timeout:g} s after it was "
                    "left out of its model list",
                    self.backend_id,
                )
            await asyncio.sleep(self.poll_interval)

    async def loaded(self) -> set[str]:
        names = {n for n, _ in await self.lists.wanted(self.backend_id)}
        sent = await self.lists.sent(self.backend_id)
        if sent:
            names.update(n for n, _ in json.loads(sent))
        ordered = sorted(names)
        states = await asyncio.gather(*(self.versions(n) for n in ordered))
        return {n for n, vs in zip(ordered, states, strict=True) if any(v.state in _HOLDING for v in vs)}

    async def loaded_among(self, names: list[str]) -> set[str]:
        """Which of `names` TF Serving holds now (GetModelStatus of each): after Redis lost the lists `loaded()`
        reads its names from, the registered models are the candidates."""
        ordered = sorted(set(names))
        states = await asyncio.gather(*(self.versions(n) for n in ordered))
        return {n for n, vs in zip(ordered, states, strict=True) if any(v.state in _HOLDING for v in vs)}

    async def healthy(self) -> bool:
        try:
            await self.versions(_PROBE, 2.0)
        except BackendError:
            return False
        return True

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        if request.protocol == "tfserving-grpc":
            return await self._forward_grpc(request)
        if request.protocol != "tfserving":
            raise BackendError(
                f"backend {self.backend_id} is a TF Serving server and speaks the TF Serving API, "
                f"not {request.protocol}",
                self.backend_id,
            )
        path = f"/v1/models/{quote(request.model, safe='')}"
        if request.version:
            path += f"/versions/{quote(request.version, safe='')}"
        if request.op in ("predict", "classify", "regress"):
            path += f":{request.op}"
        elif request.op:
            path += f"/{request.op}"
        resp = await forward_http(self._pool, self._client, self.backend_id, self.url, path, request)
        if resp.status == 404:
            text = error_text(resp.body)
            if any(m in text.lower() for m in _NOT_LOADED_MARKERS) and not await self._serves(request.model):
                raise ModelNotLoaded(
                    f"backend {self.backend_id} does not hold {request.model!r}: {text}", self.backend_id
                )
        return resp

    async def _forward_grpc(self, request: ForwardRequest) -> ForwardResponse:
        resp = await self._grpc.call(request.method, request.body, request.headers, request.timeout)
        if resp.status == 0:
            return resp
        if (
            resp.status == grpc.StatusCode.NOT_FOUND.value[0]
            and any(m in resp.details.lower() for m in _NOT_LOADED_MARKERS)
            and not await self._serves(request.model)
        ):
            raise ModelNotLoaded(
                f"backend {self.backend_id} does not hold {request.model!r}: {resp.details}", self.backend_id
            )
        if resp.status == grpc.StatusCode.UNAVAILABLE.value[0]:
            raise BackendUnavailable(
                f"backend {self.backend_id} is unavailable over gRPC at {self.grpc_url}: {resp.details}",
                self.backend_id,
            )
        return resp

    async def _serves(self, name: str) -> bool:
        """Whether some version of `name` is available: a 404 for a version it lacks is the client's to see."""
        try:
            return any(v.state == "AVAILABLE" for v in await self.versions(name, 2.0))
        except BackendError:
            return False


class _RpcFailed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)
