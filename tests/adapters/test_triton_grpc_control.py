"""Triton model control over gRPC (adapters.triton_control), against the session's real Tritons: loads by name and
by content, the unload-finished check, failures mapped to adapter errors, and warm HTTP requests that go on while
a load runs (what sending control over gRPC is for; Triton's HTTP load calls hold its HTTP threads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from adapters.base import LoadRequest
from adapters.errors import BackendLoadError, BackendUnavailable
from adapters.sources import ModelSources, SourceSettings
from adapters.triton import TritonAdapter
from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import free_port
from tests.gateway.conftest import MODELS, check_answer, infer_body
from tests.sources.conftest import model_folder

WARM, COLD = MODELS[0], MODELS[1]


@pytest.fixture
async def adapter(stack: LocalStack, tmp_path: Path) -> AsyncIterator[TritonAdapter]:
    t = stack.tritons[1]
    sources = ModelSources(SourceSettings(cache_dir=str(tmp_path / "cache")))
    # Its HTTP URL leads nowhere: every control call must go over gRPC.
    a = TritonAdapter("t1", f"http://127.0.0.1:{free_port()}", grpc_url=t.grpc_url, sources=sources, poll_interval=0.02)
    yield a
    for name in await a.loaded():
        await a.unload(name)
    await a.aclose()


async def test_loads_unloads_and_the_index_go_over_grpc_and_warm_http_requests_go_on_meanwhile(
    adapter: TritonAdapter, stack: LocalStack
) -> None:
    t = stack.tritons[1]
    await adapter.load(LoadRequest(WARM))
    assert WARM in stack.holding(t) and WARM in await adapter.loaded()

    async with httpx.AsyncClient(base_url=t.url, timeout=30) as client:
        load = asyncio.create_task(adapter.load(LoadRequest(COLD)))
        # Warm requests while the other model loads (a Python-backend load takes over a second here): they are
        # answered before that load is, which Triton's HTTP load call would not allow (it holds the HTTP threads).
        index = "/v2/repository/index"
        while not any(e.get("name") == COLD for e in (await client.post(index, json={})).json()):  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # Triton's state, another process's: polled
        answered = 0
        for _ in range(5):
            resp = await client.post(f"/v2/models/{WARM}/infer", json=infer_body([1.0]))
            check_answer(WARM, [1.0], resp.json())
            answered += not load.done()
        await load
    assert answered == 5
    assert COLD in stack.holding(t)

    # unload returns once Triton no longer holds the model (the repository index, read over gRPC)
    await adapter.unload(COLD)
    assert COLD not in stack.holding(t) and COLD not in await adapter.loaded()
    await adapter.unload(COLD)  # unloading a model Triton does not hold is no error

    with pytest.raises(BackendLoadError, match=r"failed to load 'broken': .+"):
        await adapter.load(LoadRequest("broken"))


async def test_a_load_by_content_goes_over_grpc_and_a_changed_source_swaps_the_model(
    adapter: TritonAdapter, stack: LocalStack, tmp_path: Path
) -> None:
    d = model_folder(tmp_path / "src", "content-g", 3.0)
    uri, url = f"file://{d}", stack.tritons[1].url
    await adapter.load(LoadRequest("content-g", uri))
    assert "content-g" in await adapter.loaded()
    assert not await adapter.source_changed(LoadRequest("content-g", uri))
    model_folder(tmp_path / "src", "content-g", 30.0)
    assert await adapter.source_changed(LoadRequest("content-g", uri))
    await adapter.load(LoadRequest("content-g", uri))
    async with httpx.AsyncClient(timeout=30) as client:
        out = (await client.post(f"{url}/v2/models/content-g/infer", json=infer_body([1.0]))).json()
    assert {o["name"]: o["data"] for o in out["outputs"]}["OUTPUT0"] == [31.0]
    await adapter.unload("content-g")
    assert "content-g" not in await adapter.loaded()


async def test_an_unreachable_grpc_endpoint_is_backend_unavailable() -> None:
    a = TritonAdapter("t9", "http://127.0.0.1:1", grpc_url=f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable, match="could not be reached over gRPC"):
            await a.load(LoadRequest("m"))
    finally:
        await a.aclose()
