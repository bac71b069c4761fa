"""Which adapter serves which kind of backend."""

from __future__ import annotations

from adapters.base import RuntimeAdapter
from adapters.tfserving_pending import PendingTFServingAdapter
from adapters.triton import TritonAdapter


def make_adapter(kind: str, backend_id: str, url: str, grpc_url: str | None, load_timeout: float) -> RuntimeAdapter:
    if kind == "triton":
        return TritonAdapter(backend_id, url, grpc_url=grpc_url, load_timeout=load_timeout)
    if kind == "tfserving":
        return PendingTFServingAdapter(backend_id)
    raise ValueError(f"no adapter for backend kind {kind!r}")
