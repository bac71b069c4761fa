"""Which adapter serves which kind of backend."""

from __future__ import annotations

from adapters.base import RuntimeAdapter
from adapters.tfserving import ModelLists, TFServingAdapter
from adapters.triton import TritonAdapter


def make_adapter(
    kind: str,
    backend_id: str,
    url: str,
    grpc_url: str | None,
    load_timeout: float,
    *,
    lists: ModelLists | None = None,
    model_base_path: str | None = None,
) -> RuntimeAdapter:
    """`lists` is placement's view of what list-configured backends (TF Serving) should serve."""
    if kind == "triton":
        return TritonAdapter(backend_id, url, grpc_url=grpc_url, load_timeout=load_timeout)
    if kind == "tfserving":
        if grpc_url is None or lists is None:
            raise ValueError(f"a tfserving backend needs grpc_url and model lists (backend {backend_id})")
        return TFServingAdapter(
            backend_id, url, grpc_url, lists, model_base_path=model_base_path or "/models", load_timeout=load_timeout
        )
    raise ValueError(f"no adapter for backend kind {kind!r}")
