"""The whole gateway seen as one Triton: its repository index and the statistics of all its models.

- `index`: every registered Triton-runtime model, `READY` when a usable backend holds a ready copy, else
  `UNAVAILABLE` with a reason (loading, or not loaded: the gateway loads it on its first request), in Triton's
  shape (`POST /v2/repository/index`; `RepositoryIndex` over gRPC via `encode_index`).
- `all_stats`: `GET /v2/models/stats` asked of every usable Triton backend, merged per model and version
  (counts and times summed, `last_inference` the latest, batch statistics summed per batch size), restricted to
  registered models, in Triton's shape (`{"model_stats": [...]}`).
- `grpc_index` and `grpc_statistics`: the same over gRPC, from the request's bytes (`RepositoryIndexRequest`'s
  `ready` filter; `ModelStatisticsRequest` without a model name), as the gRPC data plane's `Wide` answers.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from adapters.base import ForwardRequest
from adapters.errors import BackendError
from adapters.protowire import VARINT, WireError, encode_len, encode_string, read_varint, records, string_fields
from adapters.triton_messages import statistics_response
from gateway.errors import BadRequest
from placement.records import CopyState
from placement.view import PlacementView

if TYPE_CHECKING:
    from gateway.dataplane import DataPlane

_TRITON = "triton"


def index(view: PlacementView, ready_only: bool = False) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for name in sorted(view.models):
        if view.models[name].runtime != _TRITON:
            continue
        if view.ready_backends(name):
            out.append({"name": name, "state": "READY"})
            continue
        if ready_only:
            continue
        held = view.copies.get(name, {})
        loading = sorted(b for b, s in held.items() if s is CopyState.LOADING)
        reason = (
            f"loading on {', '.join(loading)}"
            if loading
            else "not loaded: the gateway loads it on its first request (or POST /admin/models/{name}/load)"
        )
        out.append({"name": name, "state": "UNAVAILABLE", "reason": reason.replace("{name}", name)})
    return out


def encode_index(entries: list[dict[str, str]]) -> bytes:
    """A `RepositoryIndexResponse`: `models` (1) of `ModelIndex` {name 1, version 2, state 3, reason 4}."""
    out = b""
    for e in entries:
        inner = encode_string(1, e["name"]) + encode_string(3, e["state"])
        if e.get("reason"):
            inner += encode_string(4, e["reason"])
        out += encode_len(1, inner)
    return out


async def all_stats(placer: Any, timeout: float) -> dict[str, Any]:
    """Every usable Triton backend's statistics of all its models, merged (see the module docstring)."""
    view: PlacementView = placer.view
    backends = [b for b, rec in view.backends.items() if rec.spec.kind == _TRITON and view.usable(b)]

    async def one(backend: str) -> list[dict[str, Any]]:
        request = ForwardRequest("kserve", "GET", "", None, "stats", timeout=timeout)
        try:
            resp = await placer.adapter(backend).forward(request)
            if resp.status != 200:
                return []
            stats: list[dict[str, Any]] = json.loads(resp.body).get("model_stats", [])
            return stats
        except (BackendError, ValueError):
            return []  # a backend that can't answer now adds nothing

    reports = await asyncio.gather(*(one(b) for b in backends))
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        for entry in report:
            if entry.get("name") not in view.models:
                continue
            key = (entry["name"], str(entry.get("version", "")))
            merged[key] = merge(merged[key], entry) if key in merged else entry
    return {"model_stats": [merged[k] for k in sorted(merged)]}


def merge(a: Any, b: Any, key: str = "") -> Any:
    """Two backends' statistics of one model: numbers summed (`last_inference`: the latest), dicts key by key,
    `batch_stats` by batch size, other lists side by side; strings (name, version) kept."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        if key == "batch_size":
            return a
        return max(a, b) if key == "last_inference" else a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge(a[k], b[k], k) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list):
        if key == "batch_stats":
            by_size: dict[Any, Any] = {}
            for item in [*a, *b]:
                size = item.get("batch_size")
                by_size[size] = merge(by_size[size], item) if size in by_size else item
            return [by_size[s] for s in sorted(by_size, key=str)]
        return [*a, *b]
    return a


async def grpc_index(dp: DataPlane, raw: bytes) -> bytes:
    """`RepositoryIndex`: `RepositoryIndexRequest` {repository_name 1, ready 2}; with `ready`, READY models only."""
    ready = False
    try:
        for _, wire_type, _, payload, end in records(raw, only=(2,)):
            if wire_type != VARINT:
                raise WireError(f"field 2 (ready) has wire type {wire_type}, expected a bool")
            ready = bool(read_varint(raw, payload, end)[0])
    except WireError as exc:
        raise BadRequest(f"malformed request message: {exc}") from None
    return encode_index(index(dp.placer.view, ready))


async def grpc_statistics(dp: DataPlane, raw: bytes) -> bytes | None:
    """`ModelStatistics` without a model name (field 1): every model's, merged (`all_stats`); None when the
    request names a model, which its backend answers."""
    try:
        name = string_fields(raw, (1,))[0].get(1, "")
    except WireError as exc:
        raise BadRequest(f"malformed request message: {exc}") from None
    if name:
        return None
    return statistics_response(await all_stats(dp.placer, dp.settings.backend_timeout))
