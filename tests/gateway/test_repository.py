"""The gateway as one Triton: repository index states, merged statistics, and the HTTP paths it refuses."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from tritonclient.grpc import service_pb2 as pb

from gateway.errors import BadRequest
from gateway.refusals import http_refusal
from gateway.repository import grpc_index, grpc_statistics, index, merge
from placement.records import BackendRecord, BackendSpec, Capacity, CopyState, ModelSpec
from placement.view import PlacementView


def test_index_states_and_reasons() -> None:
    view = PlacementView()
    view.models = {n: ModelSpec(n, "triton") for n in ("a", "b", "c")} | {"tf": ModelSpec("tf", "tfserving")}
    view.backends = {"t1": BackendRecord(BackendSpec("t1", "triton", "http://127.0.0.1:1", None, Capacity(4)))}
    view.copies = {"a": {"t1": CopyState.READY}, "b": {"t1": CopyState.LOADING}}
    entries = index(view)
    assert [(e["name"], e["state"]) for e in entries] == [("a", "READY"), ("b", "UNAVAILABLE"), ("c", "UNAVAILABLE")]
    assert entries[1]["reason"] == "loading on t1" and "/admin/models/c/load" in entries[2]["reason"]
    assert [e["name"] for e in index(view, ready_only=True)] == ["a"]
    # Over gRPC, from the request's bytes: the `ready` filter, and the same entries in Triton's message.
    dp = SimpleNamespace(placer=SimpleNamespace(view=view))
    for ready, names in ((True, ["a"]), (False, ["a", "b", "c"])):
        raw = asyncio.run(grpc_index(dp, pb.RepositoryIndexRequest(ready=ready).SerializeToString()))  # type: ignore[arg-type]
        models = pb.RepositoryIndexResponse.FromString(raw).models
        assert [m.name for m in models] == names and models[0].state == "READY"
    assert pb.RepositoryIndexResponse.FromString(asyncio.run(grpc_index(dp, b""))).models[2].reason  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        asyncio.run(grpc_index(dp, b"\x12\x01x"))  # type: ignore[arg-type]
    # A statistics request naming a model is its backend's to answer.
    named = pb.ModelStatisticsRequest(name="a").SerializeToString()
    assert asyncio.run(grpc_statistics(dp, named)) is None  # type: ignore[arg-type]


def test_statistics_of_two_copies_merge() -> None:
    def stats(count: int, last: int) -> dict[str, object]:
        return {
            "name": "m",
            "version": "1",
            "last_inference": last,
            "inference_count": count,
            "inference_stats": {"success": {"count": count, "ns": 10 * count}},
            "batch_stats": [{"batch_size": 1, "compute_infer": {"count": count, "ns": count}}],
        }

    merged = merge(stats(3, 100), stats(4, 90))
    assert merged["name"] == "m" and merged["version"] == "1" and merged["last_inference"] == 100
    assert merged["inference_count"] == 7 and merged["inference_stats"]["success"] == {"count": 7, "ns": 70}
    assert merged["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 7, "ns": 7}}]


def test_refused_http_paths() -> None:
    for path in ("/v2/systemsharedmemory/status", "/v2/cudasharedmemory/region/r/register"):
        assert "shared-memory" in (http_refusal(path) or "")
    assert "log settings" in (http_refusal("/v2/logging") or "")
    for path in ("/v2/trace/setting", "/v2/models/m/trace/setting"):
        assert "trace settings" in (http_refusal(path) or "")
    for path in ("/v2/models/m/infer", "/v2", "/v2/repository/index", "/v1/models/m:predict"):
        assert http_refusal(path) is None
