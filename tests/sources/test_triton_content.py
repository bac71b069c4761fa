"""The Triton adapter loading models by content, against the session's real Triton (no gateway): what Triton 2.51
does with the files sent with a load (deploy/localstack/TRITON_FACTS.md, section h) as the adapter relies on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from adapters.base import LoadRequest
from adapters.errors import BackendLoadError
from adapters.sources import ModelSources, SourceSettings
from adapters.triton import TritonAdapter
from deploy.localstack.stack import LocalStack
from tests.gateway.conftest import infer_body
from tests.sources.conftest import model_folder


def loads_of(log: Path, name: str) -> int:
    """Real loads (each `initialize` writes a line)."""
    return sum(1 for line in log.read_text().splitlines() if line.split()[0] == name) if log.exists() else 0


@pytest.fixture
async def adapter(stack: LocalStack, tmp_path: Path) -> AsyncIterator[TritonAdapter]:
    t = stack.tritons[0]
    sources = ModelSources(SourceSettings(cache_dir=str(tmp_path / "cache")))
    a = TritonAdapter("t0", t.url, sources=sources, poll_interval=0.02)
    yield a
    for name in await a.loaded():
        if name.startswith("content-"):
            await a.unload(name)
    await a.aclose()


def answer(url: str, name: str) -> tuple[str, float]:
    resp = httpx.post(f"{url}/v2/models/{name}/infer", json=infer_body([1.0]), timeout=30)
    resp.raise_for_status()
    outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
    return outputs["MODEL_NAME"][0], outputs["OUTPUT0"][0]


async def test_a_model_loaded_by_content_serves_and_is_seen_as_loaded(
    adapter: TritonAdapter, stack: LocalStack, tmp_path: Path
) -> None:
    d = model_folder(tmp_path / "src", "content-a", 5.0)
    url = stack.tritons[0].url
    await adapter.load(LoadRequest("content-a", f"file://{d}"))
    assert answer(url, "content-a") == ("content-a", 6.0)
    # Not in the repository index (only the server's own directories are), yet loaded() reports it.
    assert "content-a" not in stack.holding(stack.tritons[0])
    assert "content-a" in await adapter.loaded()
    await adapter.unload("content-a")
    assert "content-a" not in await adapter.loaded()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/v2/models/content-a/ready", timeout=5)).status_code != 200


async def test_unchanged_files_are_not_sent_again_and_changed_ones_swap_the_model(
    adapter: TritonAdapter, stack: LocalStack, tmp_path: Path
) -> None:
    log = tmp_path / "loads.log"
    d = model_folder(tmp_path / "src", "content-b", 1.0, load_log=log)
    url, uri = stack.tritons[0].url, f"file://{d}"
    await adapter.load(LoadRequest("content-b", uri))
    assert loads_of(log, "content-b") == 1
    hits, misses = adapter.sources.cache.hits, adapter.sources.cache.misses  # type: ignore[union-attr]
    await adapter.load(LoadRequest("content-b", uri))  # the same source: Triton's copy is current
    assert loads_of(log, "content-b") == 1
    assert (adapter.sources.cache.hits, adapter.sources.cache.misses) == (hits, misses)  # type: ignore[union-attr]
    assert not await adapter.source_changed(LoadRequest("content-b", uri))
    # Only model.py's content changes (same config, same version folder): Triton alone would call this a no-op;
    # the identity in the config makes it reload.
    model_folder(tmp_path / "src", "content-b", 40.0, load_log=log)
    assert await adapter.source_changed(LoadRequest("content-b", uri))
    await adapter.load(LoadRequest("content-b", uri))
    assert loads_of(log, "content-b") == 2
    assert answer(url, "content-b") == ("content-b", 41.0)
    assert not await adapter.source_changed(LoadRequest("content-b", uri))


async def test_a_source_error_is_a_load_error_naming_the_source(adapter: TritonAdapter, tmp_path: Path) -> None:
    with pytest.raises(BackendLoadError, match=r"could not be read from its source: source file:///nowhere/at-all: "):
        await adapter.load(LoadRequest("content-c", "file:///nowhere/at-all"))


async def test_tritons_own_load_failure_passes_through(adapter: TritonAdapter, tmp_path: Path) -> None:
    d = model_folder(tmp_path / "src", "content-d", 1.0)
    (d / "config.pbtxt").write_text((d / "config.pbtxt").read_text().replace('backend: "python"', 'backend: "nope"'))
    with pytest.raises(BackendLoadError, match=r"failed to load 'content-d': .*unable to find backend library"):
        await adapter.load(LoadRequest("content-d", f"file://{d}"))


async def test_the_load_is_streamed_with_its_length_and_skipped_when_the_loaded_copy_is_current(
    tmp_path: Path,
) -> None:
    """On httpx.MockTransport: the body is sent with Content-Length (no chunked encoding, whatever Triton's HTTP
    server makes of that), and a load of a copy Triton already serves from the same source sends nothing."""
    d = model_folder(tmp_path / "src", "mocked", 1.0)
    sources = ModelSources(SourceSettings(cache_dir=str(tmp_path / "cache")))
    identity = (await sources.listing(f"file://{d}")).identity()
    sent: list[httpx.Request] = []
    serving: dict[str, str] = {}

    def handle(r: httpx.Request) -> httpx.Response:
        if r.url.path.endswith("/config"):
            if "mocked" not in serving:
                return httpx.Response(400, json={"error": "Request for unknown model: 'mocked' is not found"})
            return httpx.Response(200, json={"parameters": {"modelyard.source_identity": {"string_value": identity}}})
        sent.append(r)
        serving["mocked"] = identity
        return httpx.Response(200)

    a = TritonAdapter("t0", "http://triton:8000", client=httpx.AsyncClient(transport=httpx.MockTransport(handle)))
    a.sources = sources
    await a.load(LoadRequest("mocked", f"file://{d}"))
    assert len(sent) == 1
    body = sent[0].read()
    assert sent[0].headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in sent[0].headers
    await a.load(LoadRequest("mocked", f"file://{d}"))
    assert len(sent) == 1
    await a.aclose()
