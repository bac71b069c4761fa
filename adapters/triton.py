"""Adapter for NVIDIA Triton Inference Server, or any server speaking KServe v2 with the repository extension.

The backend must run with `--model-control-mode=explicit`. Model control goes through the repository API
(`POST /v2/repository/models/{m}/load|unload`, `POST /v2/repository/index`); inference and metadata are
forwarded byte for byte over HTTP ("kserve") or, as raw messages, over gRPC to `grpc_url` ("kserve-grpc").
See `adapters.base` for the contract.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

import httpx

from adapters.base import ForwardRequest, ForwardResponse, LoadRequest
from adapters.errors import (
    BackendError,
    BackendLoadError,
    BackendTimeout,
    BackendUnavailable,
    BackendUnloadError,
    ModelNotLoaded,
)
from adapters.grpc_forward import GrpcForwarder
from adapters.http_forward import make_client, send_raw
from adapters.upstream import UpstreamPool

# Triton's words when it does not hold a model (checked against Triton 2.51; see deploy/localstack/TRITON_FACTS.md).
_NOT_LOADED_MARKERS = (
    "unknown model",
    "is not found",
    "no available versions",
    "is not at ready state",
    "is not ready",
    "not loaded",
    "unavailable model",
)
# gRPC status codes (numbers) under which Triton says it does not hold a model: NOT_FOUND "... is not found" /
# "... has no available versions", UNAVAILABLE "... version 1 is not at ready state"; ModelStatistics answers
# INVALID_ARGUMENT "requested model 'm' is not available" (TRITON_FACTS.md, section g).
_GRPC_NOT_FOUND = 5
_GRPC_UNAVAILABLE = 14
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_LOADED_CODES = frozenset({_GRPC_NOT_FOUND, _GRPC_UNAVAILABLE})
# States of a model in the repository index that still hold the backend's memory.
_HOLDING_STATES = frozenset({"READY", "LOADING", "UNLOADING"})


class TritonAdapter:
    """One Triton backend. `url` is its HTTP endpoint, e.g. http://127.0.0.1:8000; `grpc_url` its gRPC one
    ("host:port"), needed only to serve gRPC requests."""

    def __init__(
        self,
        backend_id: str,
        url: str,
        *,
        grpc_url: str | None = None,
        load_timeout: float = 120.0,
        control_timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
        poll_interval: float = 0.02,
    ) -> None:
        self.backend_id = backend_id
        self.url = url.rstrip("/")
        self.load_timeout = load_timeout
        self.control_timeout = control_timeout
        self.poll_interval = poll_interval
        self._client = client or make_client()
        # The data plane goes through the lean pool for plain-HTTP backends; https backends and an injected httpx
        # client (tests' MockTransport) keep httpx.
        lean = client is None and self.url.startswith("http://")
        self._pool = UpstreamPool(backend_id, self.url) if lean else None
        self.grpc_url = grpc_url
        self._grpc = GrpcForwarder(backend_id, grpc_url) if grpc_url else None

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._grpc is not None:
            await self._grpc.aclose()
        await self._client.aclose()

    async def _control(self, path: str, body: dict[str, Any], timeout: float) -> httpx.Response:
        try:
            return await self._client.post(
                f"{self.url}{path}", json=body, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
            )
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"backend {self.backend_id} did not answer {path} within {timeout:g} s", self.backend_id
            ) from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"backend {self.backend_id} could not be reached: {type(exc).__name__}: {exc}",
                self.backend_id,
            ) from exc

    async def load(self, model: LoadRequest) -> None:
        path = f"/v2/repository/models/{model.name}/load"
        resp = await self._control(path, {}, self.load_timeout)
        if resp.status_code != 200:
            raise BackendLoadError(
                f"backend {self.backend_id} failed to load {model.name!r}: {_error_text(resp)}",
                self.backend_id,
            )

    async def unload(self, name: str) -> None:
        resp = await self._control(f"/v2/repository/models/{name}/unload", {}, self.control_timeout)
        if resp.status_code != 200:
            text = _error_text(resp)
            if not _means_not_loaded(text):
                raise BackendUnloadError(
                    f"backend {self.backend_id} failed to unload {name!r}: {text}", self.backend_id
                )
        # Triton may answer before the model's instances are gone; the slot is only free once they are.
        deadline = time.monotonic() + self.control_timeout
        while await self._holds(name):
            if time.monotonic() > deadline:
                raise BackendTimeout(
                    f"backend {self.backend_id} still holds {name!r} {self.control_timeout:g} s after unload",
                    self.backend_id,
                )
            await asyncio.sleep(self.poll_interval)

    async def _index(self) -> list[dict[str, Any]]:
        resp = await self._control("/v2/repository/index", {}, self.control_timeout)
        if resp.status_code != 200:
            raise BackendError(
                f"backend {self.backend_id} repository index failed: {_error_text(resp)}", self.backend_id
            )
        data = resp.json()
        return data if isinstance(data, list) else []

    async def _holds(self, name: str) -> bool:
        for entry in await self._index():
            if entry.get("name") == name and entry.get("state") in _HOLDING_STATES:
                return True
        return False

    async def loaded(self) -> set[str]:
        """Models that hold memory on the backend now: ready, loading or still unloading."""
        return {e["name"] for e in await self._index() if e.get("state") in _HOLDING_STATES and "name" in e}

    async def healthy(self) -> bool:
        # Liveness, not readiness: Triton's /v2/health/ready answers 400 while any model is loading or
        # unloading, which is most of the time on an overcommitted backend.
        try:
            resp = await self._client.get(f"{self.url}/v2/health/live", timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        if request.protocol == "kserve-grpc":
            return await self._forward_grpc(request)
        if request.protocol != "kserve":
            raise BackendError(
                f"backend {self.backend_id} is a Triton server and speaks KServe v2, not {request.protocol}",
                self.backend_id,
            )
        # Quoted again: the front end un-quoted them, and a raw space or CR/LF would break (or inject into) the
        # request line the upstream pool writes.
        path = f"/v2/models/{quote(request.model, safe='')}"
        if request.version:
            path += f"/versions/{quote(request.version, safe='')}"
        if request.op:
            path += f"/{request.op}"
        if self._pool is not None:
            resp = await self._pool.request(request.method, path, request.headers, request.body, request.timeout)
        else:
            resp = await send_raw(
                self._client,
                self.backend_id,
                request.method,
                self.url + path,
                request.headers,
                request.body,
                request.timeout,
            )
        if resp.status in (400, 404, 503) and _means_not_loaded(_body_error(resp.body)):
            raise ModelNotLoaded(
                f"backend {self.backend_id} does not hold {request.model!r}: {_body_error(resp.body)}",
                self.backend_id,
            )
        return resp

    async def _forward_grpc(self, request: ForwardRequest) -> ForwardResponse:
        if self._grpc is None:
            raise BackendUnavailable(
                f"backend {self.backend_id} has no gRPC endpoint: register it with a grpc_url "
                f"(PUT /admin/backends/{self.backend_id}) to serve gRPC requests",
                self.backend_id,
            )
        resp = await self._grpc.call(request.method, request.body, request.headers, request.timeout)
        if resp.status == 0:
            return resp
        if (resp.status in _GRPC_NOT_LOADED_CODES and _means_not_loaded(resp.details)) or (
            resp.status == _GRPC_INVALID_ARGUMENT
            and request.op == "ModelStatistics"
            and "is not available" in resp.details
        ):
            raise ModelNotLoaded(
                f"backend {self.backend_id} does not hold {request.model!r}: {resp.details}", self.backend_id
            )
        if resp.status == _GRPC_UNAVAILABLE:
            # Not a model answer: the connection failed, or the server is shutting down.
            raise BackendUnavailable(
                f"backend {self.backend_id} is unavailable over gRPC at {self.grpc_url}: {resp.details}",
                self.backend_id,
            )
        return resp


def _body_error(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _error_text(resp: httpx.Response) -> str:
    return _body_error(resp.content) or f"HTTP {resp.status_code} {resp.text[:500]}"


def _means_not_loaded(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in _NOT_LOADED_MARKERS)
