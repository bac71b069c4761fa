"""The Triton adapter's boundary, on httpx.MockTransport: what each Triton answer becomes.

The answers are the ones real Triton 2.51 gives (deploy/localstack/TRITON_FACTS.md); the real server is
exercised end to end in tests/gateway.
"""

from __future__ import annotations

import json

import httpx
import pytest

from adapters.base import ForwardRequest, LoadRequest
from adapters.errors import BackendLoadError, BackendTimeout, BackendUnavailable, ModelNotLoaded
from adapters.http_forward import make_client
from adapters.triton import TritonAdapter


def adapter(handler: httpx.MockTransport) -> TritonAdapter:
    return TritonAdapter("t0", "http://triton:8000", client=httpx.AsyncClient(transport=handler), poll_interval=0)


def streamed(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body arrives as a stream, as from a real transport."""
    return httpx.Response(status, stream=httpx.ByteStream(body), headers=headers)


def infer(model: str = "m", version: str | None = None) -> ForwardRequest:
    return ForwardRequest(
        "kserve", "POST", model, version, "infer", b'{"inputs":[]}', [("content-type", "application/json")]
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, "Request for unknown model: 'm' is not found"),
        (404, "Request for unknown model: 'm' has no available versions"),
        (503, "Request for unknown model: 'm' version 1 is not at ready state"),
    ],
)
async def test_answers_meaning_the_model_is_not_there_raise_model_not_loaded(status: int, error: str) -> None:
    a = adapter(httpx.MockTransport(lambda r: streamed(status, json.dumps({"error": error}).encode())))
    with pytest.raises(ModelNotLoaded, match="does not hold 'm'"):
        await a.forward(infer())


async def test_other_backend_errors_pass_through_byte_for_byte() -> None:
    body = b"{\"error\":\"unexpected inference input 'X' for model 'm'\"}"
    a = adapter(httpx.MockTransport(lambda r: streamed(400, body, {"content-type": "text/plain"})))
    resp = await a.forward(infer())
    assert resp.status == 400 and resp.body == body and ("content-type", "text/plain") in resp.headers


async def test_forward_builds_the_path_and_passes_bytes_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handle(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return streamed(200, b"\x00\x01binary", {"inference-header-content-length": "12"})

    resp = await adapter(httpx.MockTransport(handle)).forward(infer("m7", "3"))
    assert seen[0].url.path == "/v2/models/m7/versions/3/infer"
    assert seen[0].content == b'{"inputs":[]}'
    assert resp.body == b"\x00\x01binary" and ("inference-header-content-length", "12") in resp.headers


async def test_transport_failures_become_adapter_errors() -> None:
    def refuse(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    def slow(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(BackendUnavailable, match="could not be reached"):
        await adapter(httpx.MockTransport(refuse)).forward(infer())
    with pytest.raises(BackendTimeout, match="did not answer"):
        await adapter(httpx.MockTransport(slow)).forward(infer())
    assert not await adapter(httpx.MockTransport(refuse)).healthy()


async def test_load_failure_carries_tritons_reason() -> None:
    reason = "load failed for model 'bad': version 1 is at UNAVAILABLE state: Internal: RuntimeError: boom;\n"
    a = adapter(httpx.MockTransport(lambda r: httpx.Response(400, json={"error": reason})))
    with pytest.raises(BackendLoadError, match="RuntimeError: boom"):
        await a.load(LoadRequest("bad"))


async def test_unload_returns_only_when_the_index_no_longer_holds_the_model() -> None:
    states = iter(["UNLOADING", "UNLOADING", "UNAVAILABLE"])
    index_calls = 0

    def handle(r: httpx.Request) -> httpx.Response:
        nonlocal index_calls
        if r.url.path.endswith("/unload") or r.url.path.endswith("/ready"):
            return httpx.Response(200)
        index_calls += 1
        return httpx.Response(200, content=json.dumps([{"name": "m", "version": "1", "state": next(states)}]))

    await adapter(httpx.MockTransport(handle)).unload("m")
    assert index_calls == 3


async def test_no_accept_encoding_is_added_that_the_client_did_not_send() -> None:
    seen: list[httpx.Request] = []

    def handle(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return streamed(200, b"{}")

    client = make_client()
    client._transport = httpx.MockTransport(handle)  # the real client's headers, a fake network
    a = TritonAdapter("t0", "http://triton:8000", client=client)
    await a.forward(infer())
    assert "accept-encoding" not in seen[0].headers
    await a.forward(ForwardRequest("kserve", "POST", "m", None, "infer", b"{}", [("accept-encoding", "gzip")]))
    assert seen[1].headers["accept-encoding"] == "gzip"


async def test_path_segments_are_quoted_again_before_they_reach_the_backend() -> None:
    seen: list[httpx.Request] = []

    def handle(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return streamed(200, b"{}")

    await adapter(httpx.MockTransport(handle)).forward(infer("m", "1\r\nX: y"))
    assert seen[0].url.raw_path == b"/v2/models/m/versions/1%0D%0AX%3A%20y/infer"
