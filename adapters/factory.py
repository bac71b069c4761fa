"""Which adapter serves which kind of backend."""

from __future__ import annotations

from adapters.base import RuntimeAdapter
from adapters.sources import ModelSources
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
    sources: ModelSources | None = None,
) -> RuntimeAdapter:
    """`lists` is placement's view of what list-configured backends (TF Serving) should serve. `sources` reads
    the files of models registered with a source, for the runtimes that are sent files (Triton); TF Serving
    reads sources itself."""
    if kind == "triton":
        upload = sources.settings.triton_upload_max_bytes if sources is not None else 256 * 1024 * 1024
        return TritonAdapter(
            backend_id, url, grpc_url=grpc_url, load_timeout=load_timeout, sources=sources, upload_max_bytes=upload
        )
    if kind == "tfserving":
        if grpc_url is None or lists is None:
            raise ValueError(f"a tfserving backend needs grpc_url and model lists (backend {backend_id})")
        return TFServingAdapter(
            backend_id, url, grpc_url, lists, model_base_path=model_base_path or "/models", load_timeout=load_timeout
        )
    raise ValueError(f"no adapter for backend kind {kind!r}")
