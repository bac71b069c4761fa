"""The data plane's short path through uvicorn's protocol (gateway.http_fast), on a recording transport.

The end-to-end tests serve every data-plane request through it (gateway.server); these check the HTTP/1.1
details they don't reach: one write per answer, keep-alive, pipelining, the fallbacks to uvicorn's own path,
errors, and `Connection: close`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.http_dataplane import HttpDataPlane
from gateway.http_fast import DataPlaneProtocol, data_plane_protocol


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the body it got and what it saw of the request."""
    message = await receive()
    if scope["path"].endswith("/boom"):
        raise RuntimeError("boom")
    body = message["body"]
    headers = [(b"content-type", b"application/octet-stream"), (b"x-path", scope["path"].encode())]
    headers.append((b"x-method", scope["method"].encode()))
    if not scope["path"].endswith("/nolength"):
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Conn:
    def __init__(self, max_body: int = 1000) -> None:
        cls = data_plane_protocol(HttpDataPlane.handles, max_body)
        config = Config(app=echo, http=cls, lifespan="off", log_config=None, proxy_headers=False)
        config.load()
        self.state = ServerState()
        self.state.default_headers = [(b"date", b"Sat, 05 Dec 2026 19:00:00 GMT"), (b"server", b"uvicorn")]
        self.proto: DataPlaneProtocol = cls(config=config, server_state=self.state, app_state={})
        self.transport = Transport()
        self.proto.connection_made(self.transport)

    async def send(self, data: bytes) -> list[bytes]:
        """Feed `data`, wait for every request it started to be answered; the writes made meanwhile."""
        before = len(self.transport.writes)
        self.proto.data_received(data)
        while self.state.tasks:  # pipelined requests start when the one before them is answered
            await asyncio.gather(*list(self.state.tasks))
        return self.transport.writes[before:]


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n%s\r\n%s" % (path, len(body), extra, body)


async def test_a_data_plane_answer_is_one_write_and_the_connection_is_kept() -> None:
    conn = Conn()
    for body in (b'{"inputs": []}', b"second"):
        writes = await conn.send(post(b"/v2/models/m%201/infer", body))
        assert len(writes) == 1
        head, _, got = writes[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 200 OK"
        assert got == body
        assert b"x-path: /v2/models/m 1/infer" in lines  # un-quoted, as uvicorn gives it
        assert b"content-length: %d" % len(body) in lines
        assert any(line.startswith(b"date: ") for line in lines)  # uvicorn's default headers stay
        assert b"connection: close" not in lines
    assert not conn.transport.closed
    assert conn.state.total_requests == 2


async def test_a_missing_content_length_is_added_and_get_and_tf_serving_paths_are_short_too() -> None:
    conn = Conn()
    writes = await conn.send(post(b"/v1/models/m:predict/nolength", b"xyz"))
    assert len(writes) == 1 and b"content-length: 3\r\n" in writes[0] and writes[0].endswith(b"\r\n\r\nxyz")
    writes = await conn.send(b"GET /v2/models/m HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert len(writes) == 1 and b"x-method: GET" in writes[0]


@pytest.mark.parametrize(
    "request_bytes",
    [
        post(b"/admin/models", b"abc"),  # not the data plane
        post(b"/v2/models/m/infer", b"x" * 1001),  # over the body limit: the app answers it (413) itself
        post(b"/v2/models/m/generate_stream", b"abc"),  # streamed answers
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        post(b"/v2/models/m/infer", b"abc", b"expect: 100-continue\r\n"),
        b"GET /v2/models/m HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /v2/models/m HTTP/1.1\r\nhost: gw\r\ncontent-length: 1001\r\n\r\n" + b"x" * 1001,
    ],
)
async def test_other_requests_take_uvicorns_path(request_bytes: bytes) -> None:
    conn = Conn()
    writes = await conn.send(request_bytes)
    answer = b"".join(writes)
    assert len(writes) >= 2  # uvicorn writes the head and the body apart (and 100 Continue first)
    assert b"HTTP/1.1 200 OK" in answer
    assert answer.endswith(b"x" * 1001 if b"x" * 1001 in request_bytes else b"abc")


async def test_pipelined_requests_are_answered_in_order() -> None:
    conn = Conn()
    writes = await conn.send(
        post(b"/v2/models/a/infer", b"first") + post(b"/admin/x", b"second") + post(b"/v2/models/b/infer", b"third")
    )
    answer = b"".join(writes)
    assert answer.index(b"first") < answer.index(b"second") < answer.index(b"third")
    assert answer.count(b"HTTP/1.1 200 OK") == 3 and not conn.transport.closed


async def test_an_app_error_is_a_500_and_closes_the_connection() -> None:
    conn = Conn()
    writes = await conn.send(post(b"/v2/models/m/boom", b"abc"))
    assert writes == [writes[0]] and writes[0].startswith(b"HTTP/1.1 500 Internal Server Error")
    assert b"connection: close" in writes[0] and conn.transport.closed


async def test_connection_close_is_honoured() -> None:
    conn = Conn()
    writes = await conn.send(post(b"/v2/models/m/infer", b"abc", b"connection: close\r\n"))
    assert len(writes) == 1 and b"connection: close\r\n" in writes[0] and conn.transport.closed


async def test_a_client_gone_before_the_answer_gets_nothing_written() -> None:
    conn = Conn()
    conn.proto.data_received(post(b"/v2/models/m/infer", b"abc"))
    conn.proto.connection_lost(None)  # before the task ran
    await asyncio.gather(*list(conn.state.tasks))
    assert conn.transport.writes == []


def test_the_fast_path_is_used_only_on_a_uvicorn_it_was_tested_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn

    from gateway import server
    from gateway.http_fast import DataPlaneProtocol

    fast = server.http_protocol(1024)
    assert isinstance(fast, type) and issubclass(fast, DataPlaneProtocol)  # the pinned uvicorn (constraints.txt)
    monkeypatch.setattr(uvicorn, "__version__", "9.0.0")
    with caplog.at_level("WARNING", logger="modelyard"):
        assert server.http_protocol(1024) == "httptools"
    assert "HTTP fast path off: uvicorn 9.0.0" in caplog.text
