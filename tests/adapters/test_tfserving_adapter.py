"""The TF Serving adapter against the TF Serving emulator (real SavedModels), below placement: model lists
are an in-memory stand-in for `placement.served.ServedLists` (tested on real Redis in tests/placement)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from adapters.base import ForwardRequest, LoadRequest
from adapters.errors import BackendLoadError, ModelNotLoaded
from adapters.tfserving import TFServingAdapter
from tests.tfserving_models import build_broken_model, build_models
from tests.tfserving_stack import TFServingEmulator


class Lists:
    """Wanted lists kept in memory; `hold` is a lock, as the Redis lease is across gateways."""

    def __init__(self) -> None:
        self.wanted_models: dict[str, str | None] = {}
        self.sent_value: str | None = None
        self.sends = 0
        self._lock = asyncio.Lock()

    async def wanted(self, backend_id: str) -> list[tuple[str, str | None]]:
        return sorted(self.wanted_models.items())

    @contextlib.asynccontextmanager
    async def hold(self, backend_id: str, timeout: float) -> AsyncIterator[int]:
        async with asyncio.timeout(timeout), self._lock:
            yield 1

    async def sent(self, backend_id: str) -> str | None:
        return self.sent_value

    async def record_sent(self, backend_id: str, token: int, value: str) -> bool:
        self.sent_value = value
        self.sends += 1
        return True


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFServingEmulator]:
    root = tmp_path_factory.mktemp("tfs-adapter")
    build_models(root, ["a", "b"])
    build_broken_model(root, "broken")
    with TFServingEmulator(root) as em:
        yield em


@pytest.fixture
async def adapter(emulator: TFServingEmulator) -> AsyncIterator[tuple[TFServingAdapter, Lists]]:
    lists = Lists()
    ad = TFServingAdapter(
        "tfs", emulator.rest_url, emulator.grpc_url, lists, model_base_path=str(emulator.model_root), load_timeout=30
    )
    yield ad, lists
    lists.wanted_models.clear()
    await ad.unload("__nothing__")  # sends the empty list: the emulator starts empty for the next test
    await ad.aclose()


def predict(model: str) -> ForwardRequest:
    body = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()
    return ForwardRequest("tfserving", "POST", model, None, "predict", body, [("content-type", "application/json")])


async def test_load_forward_unload_with_whole_lists(adapter: tuple[TFServingAdapter, Lists]) -> None:
    ad, lists = adapter
    assert await ad.healthy()
    lists.wanted_models["a"] = None  # placement reserves the copy first
    await ad.load(LoadRequest("a"))
    assert json.loads(lists.sent_value or "") == [["a", f"{ad.model_base_path}/a"]]
    lists.wanted_models["b"] = "file://" + ad.model_base_path + "/b"
    await ad.load(LoadRequest("b", lists.wanted_models["b"]))
    assert await ad.loaded() == {"a", "b"}
    resp = await ad.forward(predict("b"))
    assert resp.status == 200 and json.loads(resp.body)["predictions"][0]["model"] == "b"
    # Loading a model the backend already has sends nothing again.
    sends = lists.sends
    await ad.load(LoadRequest("a"))
    assert lists.sends == sends
    # Unload: out of the wanted list, and the call returns once TF Serving no longer holds it.
    del lists.wanted_models["a"]
    await ad.unload("a")
    assert {v.state for v in await ad.versions("a")} == {"END"}
    assert await ad.loaded() == {"b"}
    with pytest.raises(ModelNotLoaded, match="does not hold 'a'"):
        await ad.forward(predict("a"))
    # A version the backend lacks of a model it serves is the client's 404, not "not loaded".
    missing = ForwardRequest("tfserving", "POST", "b", "9", "predict", predict("b").body)
    assert (await ad.forward(missing)).status == 404


async def test_a_failed_load_says_why_and_leaves_the_list(adapter: tuple[TFServingAdapter, Lists]) -> None:
    ad, lists = adapter
    lists.wanted_models["broken"] = None
    with pytest.raises(BackendLoadError, match="failed to load 'broken'"):
        await ad.load(LoadRequest("broken"))
    # Sent out of the list again, so that a later load is a real retry.
    assert "broken" not in (lists.sent_value or "")


async def test_a_backend_that_restarted_gets_the_list_again(
    adapter: tuple[TFServingAdapter, Lists], emulator: TFServingEmulator
) -> None:
    ad, lists = adapter
    lists.wanted_models["a"] = None
    await ad.load(LoadRequest("a"))
    # The server lost its models (a restart) while the recorded list still names "a": a load must resend.
    lists.wanted_models.clear()
    await ad.unload("a")
    lists.wanted_models["a"] = None
    lists.sent_value = json.dumps([["a", f"{ad.model_base_path}/a"]])
    await ad.load(LoadRequest("a"))
    assert "AVAILABLE" in {v.state for v in await ad.versions("a")}


async def test_an_unreachable_backend_is_unhealthy(tmp_path: Path) -> None:
    from gateway.embedded_redis import free_port

    port = free_port()
    ad = TFServingAdapter("gone", f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", Lists())
    assert not await ad.healthy()
    await ad.aclose()


async def test_after_the_lists_are_lost_the_registered_names_find_what_it_holds(
    adapter: tuple[TFServingAdapter, Lists],
) -> None:
    ad, lists = adapter
    lists.wanted_models["a"] = None
    await ad.load(LoadRequest("a"))
    lists.wanted_models.clear()
    lists.sent_value = None  # Redis lost the lists: loaded() knows no names any more
    assert await ad.loaded() == set()
    assert await ad.loaded_among(["a", "b", "never-registered"]) == {"a"}  # GetModelStatus of each name
