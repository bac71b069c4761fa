"""Adapter for NVIDIA Triton Inference Server, or any server speaking KServe v2 with the repository extension.

The backend must run with `--model-control-mode=explicit`. Model control goes through the repository API: over
gRPC (`RepositoryModelLoad`/`Unload`/`Index`, `adapters.triton_control`) when the backend has a `grpc_url`, since
Triton's HTTP load/unload calls stall its warm HTTP requests; over HTTP (`POST /v2/repository/models/{m}/load|unload`,
`POST /v2/repository/index`) otherwise. Inference and metadata are
forwarded byte for byte over HTTP ("kserve") or, as raw messages, over gRPC to `grpc_url` ("kserve-grpc").
See `adapters.base` for the contract.

A model with a `source` (`file:///dir`, `s3://bucket/prefix`) is loaded by content: its files come from the
gateway's disk cache (`adapters.sources`) and go to Triton with the load call, as the repository API's overrides
(`{"parameters": {"config": "<config JSON>", "file:1/model.py": "<base64>", ...}}`, streamed, never whole in
memory; over gRPC, files up to `_GRPC_UPLOAD_MAX` in all go in one message, larger ones over HTTP), so Triton
needs no access to the source. What Triton 2.51 does with such loads is in
deploy/localstack/TRITON_FACTS.md, section h; in short:
- the config must come with the files, as JSON; it carries the source's identity as a parameter, because Triton
  reloads a loaded model only when its config or version folders change, never for changed file contents;
- the model does not appear in the repository index: `loaded()` adds the models Triton reports statistics for,
  and `unload` waits `content_unload_grace` after the model stopped being served (the only signal there is).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
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
from adapters.grpc_forward import GrpcForwarder, GrpcStream
from adapters.http_forward import error_text, forward_http, make_client
from adapters.http_stream import StreamedResponse, stream_http
from adapters.sources import ModelFiles, ModelSources, SourceError
from adapters.triton_config import config_json, identity_of
from adapters.triton_control import ControlAnswer, TritonGrpcControl
from adapters.upstream import UpstreamPool
from adapters.upstream_stream import StreamUpstream

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
# Bytes of a file read per step while streaming a load by content: a multiple of 3, so that the base64 of the
# chunks, concatenated, is the base64 of the file.
_UPLOAD_CHUNK = 3 * 256 * 1024
# Quoted data-plane paths kept per adapter (cleared when full: a bound, not an LRU).
_PATH_CACHE = 4096
# A load by content over gRPC is one message held in memory: above this many bytes of files it goes over HTTP,
# streamed, instead.
_GRPC_UPLOAD_MAX = 64 * 1024 * 1024


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
        sources: ModelSources | None = None,
        upload_max_bytes: int = 256 * 1024 * 1024,
        content_unload_grace: float = 1.5,
        grpc_control: bool = True,
    ) -> None:
        """`sources` reads the files of models registered with a source; `upload_max_bytes` bounds what one load
        sends; `content_unload_grace` is how long after unloading a model loaded by content the slot is still
        taken (Triton shows no state for such a model; a Python-backend model's process exits ~1.1 s after).
        `grpc_control` False keeps model control on HTTP even with a `grpc_url` (for comparisons)."""
        self.backend_id = backend_id
        self.sources = sources
        self.upload_max_bytes = upload_max_bytes
        self.content_unload_grace = content_unload_grace
        self.url = url.rstrip("/")
        self.load_timeout = load_timeout
        self.control_timeout = control_timeout
        self.poll_interval = poll_interval
        self._paths: dict[tuple[str, str | None, str], str] = {}  # (model, version, op) -> quoted path
        self._client = client or make_client()
        # The data plane goes through the lean pool for plain-HTTP backends; https backends and an injected httpx
        # client (tests' MockTransport) keep httpx.
        lean = client is None and self.url.startswith("http://")
        self._pool = UpstreamPool(backend_id, self.url) if lean else None
        self._streams = StreamUpstream(backend_id, self.url) if lean else None  # generate_stream's, the same way
        self.grpc_url = grpc_url
        self._grpc = GrpcForwarder(backend_id, grpc_url) if grpc_url else None
        self._ctl = TritonGrpcControl(backend_id, grpc_url) if grpc_url and grpc_control else None

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._streams is not None:
            self._streams.close()
        if self._grpc is not None:
            await self._grpc.aclose()
        if self._ctl is not None:
            await self._ctl.aclose()
        await self._client.aclose()

    async def _control(self, path: str, body: dict[str, Any], timeout: float) -> httpx.Response:
        return await self._request("POST", path, timeout, json=body)

    async def _request(self, method: str, path: str, timeout: float, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(
                method, f"{self.url}{path}", timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)), **kwargs
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
        path = f"/v2/repository/models/{quote(model.name, safe='')}/load"
        sent: httpx.Response | ControlAnswer | None
        if model.source is not None:
            sent = await self._load_by_content(path, model.name, model.source)
            if sent is None:
                return  # loaded here already, from the source as it is now
        elif self._ctl is not None:
            sent = await self._ctl.load(model.name, self.load_timeout)
        else:
            sent = await self._control(path, {}, self.load_timeout)
        if isinstance(sent, httpx.Response):
            sent = ControlAnswer(0 if sent.status_code == 200 else sent.status_code, _error_text(sent))
        self._raise_load_failure(model, sent)

    def _raise_load_failure(self, model: LoadRequest, answer: ControlAnswer) -> None:
        if answer.status == 0:
            return
        text = answer.details
        if model.source is not None and "failed to poll from model repository" in text:
            text += " (Triton refused the files sent with the load; its log has the reason)"
        raise BackendLoadError(f"backend {self.backend_id} failed to load {model.name!r}: {text}", self.backend_id)

    async def _load_by_content(self, path: str, name: str, source: str) -> httpx.Response | ControlAnswer | None:
        """Send the model's files with the load call; None when the copy loaded here is already current (Triton
        would answer the same load with a no-op, but the files would still travel)."""
        if self.sources is None:
            raise BackendLoadError(
                f"backend {self.backend_id} cannot load {name!r} from {source}: this adapter has no model sources",
                self.backend_id,
            )
        try:
            listing = await self.sources.listing(source)
            if await self._loaded_identity(name) == listing.identity():
                return None
            async with self.sources.files(source, self.upload_max_bytes, listing=listing) as files:
                if self._ctl is not None and files.size <= _GRPC_UPLOAD_MAX:
                    config = config_json(files.config, name, files.uri, files.identity)
                    contents = {rel: await asyncio.to_thread(_read_exactly, p, size) for rel, p, size in files.files}
                    return await self._ctl.load(name, self.load_timeout, config, contents)
                length, body = _load_body(name, files)
                return await self._request(
                    "POST",
                    path,
                    self.load_timeout,
                    content=body,
                    headers={"content-type": "application/json", "content-length": str(length)},
                )
        except SourceError as exc:
            raise BackendLoadError(f"model {name!r} could not be read from its source: {exc}", self.backend_id) from exc

    async def source_changed(self, model: LoadRequest) -> bool:
        """Whether the copy loaded here came from another version of the model's source than the current one.
        False when the model is not loaded here (nothing to refresh). Raises `SourceError` when the source can't
        be listed, `BackendError` when Triton can't be asked."""
        if model.source is None or self.sources is None:
            return False
        loaded = await self._loaded_identity(model.name)
        if loaded is None:
            return False
        current = (await self.sources.listing(model.source)).identity()
        return loaded != current

    async def _loaded_identity(self, name: str) -> str | None:
        """The source identity of the copy of `name` Triton serves now (None: not served, or not from a source)."""
        if self._ctl is not None:
            config = await self._ctl.config(name, self.control_timeout)
            return identity_of(config) if config is not None else None
        resp = await self._request("GET", f"/v2/models/{quote(name, safe='')}/config", self.control_timeout)
        if resp.status_code != 200:
            return None
        try:
            data = resp.json()
        except ValueError:
            return None
        return identity_of(data) if isinstance(data, dict) else None

    async def unload(self, name: str) -> None:
        quoted = quote(name, safe="")
        # A model loaded by content has no entry in the repository index: whether it was being served before the
        # unload is all there is to know about it.
        if self._ctl is not None:
            served = await self._ctl.ready(name, self.control_timeout)
            answer = await self._ctl.unload(name, self.control_timeout)
        else:
            served = (await self._request("GET", f"/v2/models/{quoted}/ready", self.control_timeout)).status_code == 200
            resp = await self._control(f"/v2/repository/models/{quoted}/unload", {}, self.control_timeout)
            answer = ControlAnswer(0 if resp.status_code == 200 else resp.status_code, _error_text(resp))
        if answer.status != 0:
            text = answer.details
            if not _means_not_loaded(text):
                raise BackendUnloadError(
                    f"backend {self.backend_id} failed to unload {name!r}: {text}", self.backend_id
                )
        # Triton may answer before the model's instances are gone; the slot is only free once they are.
        deadline = time.monotonic() + self.control_timeout
        while True:
            entry = await self._index_entry(name)
            if entry is None:
                if served:
                    await asyncio.sleep(self.content_unload_grace)
                return
            if entry.get("state") not in _HOLDING_STATES:
                return
            if time.monotonic() > deadline:
                raise BackendTimeout(
                    f"backend {self.backend_id} still holds {name!r} {self.control_timeout:g} s after unload",
                    self.backend_id,
                )
            await asyncio.sleep(self.poll_interval)

    async def _index(self) -> list[dict[str, Any]]:
        if self._ctl is not None:
            answer = await self._ctl.index(self.control_timeout)
            if answer.status != 0:
                raise BackendError(
                    f"backend {self.backend_id} repository index failed: {answer.details}", self.backend_id
                )
            return [{"name": m.name, "version": m.version, "state": m.state} for m in answer.message.models]
        resp = await self._control("/v2/repository/index", {}, self.control_timeout)
        if resp.status_code != 200:
            raise BackendError(
                f"backend {self.backend_id} repository index failed: {_error_text(resp)}", self.backend_id
            )
        data = resp.json()
        return data if isinstance(data, list) else []

    async def _index_entry(self, name: str) -> dict[str, Any] | None:
        return next((e for e in await self._index() if e.get("name") == name), None)

    async def loaded(self) -> set[str]:
        """Models that hold memory on the backend now: ready, loading or still unloading in the repository index,
        and the models loaded by content, which only Triton's statistics list (while they are served)."""
        held = {e["name"] for e in await self._index() if e.get("state") in _HOLDING_STATES and "name" in e}
        if self._ctl is not None:
            answer = await self._ctl.statistics(self.control_timeout)
            if answer.status != 0:
                raise BackendError(
                    f"backend {self.backend_id} model statistics failed: {answer.details}", self.backend_id
                )
            return held | {m.name for m in answer.message.model_stats}
        resp = await self._request("GET", "/v2/models/stats", self.control_timeout)
        if resp.status_code in (404, 501):
            return held  # a KServe server without Triton's statistics extension (nor loads by content, then)
        if resp.status_code != 200:
            raise BackendError(
                f"backend {self.backend_id} model statistics failed: {_error_text(resp)}", self.backend_id
            )
        try:
            data = resp.json()
        except ValueError:
            data = {}
        stats = data.get("model_stats", []) if isinstance(data, dict) else []
        return held | {str(m["name"]) for m in stats if isinstance(m, dict) and "name" in m}

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
        key = (request.model, request.version, request.op)
        path = self._paths.get(key)
        if path is None:  # quoting costs microseconds per request; a few paths serve nearly all of them
            path = _model_path(request)
            if len(self._paths) >= _PATH_CACHE:
                self._paths.clear()
            self._paths[key] = path
        resp = await forward_http(self._pool, self._client, self.backend_id, self.url, path, request)
        if resp.status in (400, 404, 503) and _means_not_loaded(error_text(resp.body)):
            raise ModelNotLoaded(
                f"backend {self.backend_id} does not hold {request.model!r}: {error_text(resp.body)}",
                self.backend_id,
            )
        return resp

    def stream_http(self, request: ForwardRequest) -> AbstractAsyncContextManager[StreamedResponse]:
        """A KServe HTTP request whose answer is relayed as it comes (`generate_stream`'s server-sent events)."""
        path = _model_path(request)
        if self._streams is not None:
            return self._streams.stream(request.method, path, request.headers, request.body, request.timeout)
        return stream_http(self._client, self.backend_id, f"{self.url}{path}", request)

    def open_stream(self, method: str, headers: list[tuple[str, str]], timeout: float | None) -> GrpcStream:
        """A `ModelStreamInfer` stream to this Triton (`adapters.base.StreamingAdapter`)."""
        return self._grpc_forwarder().stream(method, headers, timeout)

    def _grpc_forwarder(self) -> GrpcForwarder:
        if self._grpc is None:
            raise BackendUnavailable(
                f"backend {self.backend_id} has no gRPC endpoint: register it with a grpc_url "
                f"(PUT /admin/backends/{self.backend_id}) to serve gRPC requests",
                self.backend_id,
            )
        return self._grpc

    async def _forward_grpc(self, request: ForwardRequest) -> ForwardResponse:
        resp = await self._grpc_forwarder().call(request.method, request.body, request.headers, request.timeout)
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


def _model_path(request: ForwardRequest) -> str:
    """`/v2/models/{model}[/versions/{v}][/{op}]`. Quoted again: the front end un-quoted them, and a raw space
    or CR/LF would break (or inject into) the request line the upstream pool writes."""
    if not request.model:  # the server's own calls about all models (`GET /v2/models/stats`)
        return f"/v2/models/{request.op}"
    path = f"/v2/models/{quote(request.model, safe='')}"
    if request.version:
        path += f"/versions/{quote(request.version, safe='')}"
    if request.op:
        path += f"/{request.op}"
    return path


def _error_text(resp: httpx.Response) -> str:
    return error_text(resp.content) or f"HTTP {resp.status_code} {resp.text[:500]}"


def _read_exactly(path: Path, size: int) -> bytes:
    data = path.read_bytes()
    if len(data) != size:
        raise SourceError(f"cache file {path} changed while it was being read ({len(data)} bytes, {size} expected)")
    return data


def _means_not_loaded(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in _NOT_LOADED_MARKERS)


def _load_body(name: str, files: ModelFiles) -> tuple[int, AsyncIterator[bytes]]:
    """The load request's JSON body, `{"parameters": {"config": ..., "file:<path>": "<base64>", ...}}`, as its
    length and a stream of its bytes: each file is read from the cache and base64-encoded chunk by chunk."""
    config = config_json(files.config, name, files.uri, files.identity)
    head = b'{"parameters":{"config":' + json.dumps(config).encode()
    keys = [(b"," + json.dumps(f"file:{rel}").encode() + b':"', path, size) for rel, path, size in files.files]
    length = len(head) + sum(len(k) + 4 * ((size + 2) // 3) + 1 for k, _, size in keys) + 2

    async def stream() -> AsyncIterator[bytes]:
        yield head
        for key, path, size in keys:
            yield key
            sent = 0
            f = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, _UPLOAD_CHUNK):
                    sent += len(chunk)
                    yield base64.b64encode(chunk)
            finally:
                f.close()
            if sent != size:
                raise SourceError(f"cache file {path} changed while it was being sent ({sent} bytes, {size} expected)")
            yield b'"'
        yield b"}}"

    return length, stream()
