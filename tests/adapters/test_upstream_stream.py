"""The lean pool's streamed answers (`adapters.upstream_stream.StreamUpstream`) against a real socket server on
127.0.0.1 that writes exactly what each test scripts: chunks relayed as written, keep-alive reuse, errors before
the head. (A reader that stops reading holds the socket back instead of gathering the body: that is tested end to
end, tests/gateway/test_http_stream_backpressure.py.)"""

from __future__ import annotations

import asyncio

import pytest

from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable
from adapters.upstream_stream import StreamUpstream
from deploy.localstack.triton import free_port
from tests.adapters.test_upstream import each_request, read_request, server

__all__ = ["server"]  # the fixture, shared with test_upstream

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-b: 1\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_each_chunk_comes_as_written_and_the_connection_is_reused(server) -> None:  # type: ignore[no-untyped-def]
    go_on = asyncio.Event()
    connections = 0
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        async for head, body in each_request(reader):
            heads.append(head + body)
            writer.write(_HEAD + _chunk(b"data: 1\n\n"))
            await writer.drain()
            await go_on.wait()  # the second event only once the client has the first
            go_on.clear()
            writer.write(_chunk(b"data: 2\n\n") + b"0\r\n\r\n")
            await writer.drain()

    pool = StreamUpstream("b", await server(handle))
    for _ in range(2):
        async with pool.stream("POST", "/v2/models/m/generate_stream", [("x-a", "1")], b"{}", 5) as resp:
            assert resp.status == 200 and ("x-b", "1") in resp.headers
            assert all(k != "transfer-encoding" for k, _ in resp.headers)  # hop-by-hop: not passed on
            got = [await anext(resp.chunks)]
            go_on.set()
            got += [c async for c in resp.chunks]
            assert got == [b"data: 1\n\n", b"data: 2\n\n"]
    assert connections == 1
    assert heads[0].startswith(b"POST /v2/models/m/generate_stream HTTP/1.1\r\n") and b"x-a: 1\r\n" in heads[0]
    assert heads[0].endswith(b"content-length: 2\r\n\r\n{}")
    pool.close()


async def test_errors_before_the_head(server) -> None:  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()  # never answers (the client's close ends this with the server)

    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    with pytest.raises(BackendRefused):
        async with StreamUpstream("b", f"http://127.0.0.1:{free_port()}").stream("POST", "/", [], b"", 2):
            pass
    with pytest.raises(BackendTimeout):
        async with StreamUpstream("b", await server(silent)).stream("POST", "/", [], b"", 0.2):
            pass
    with pytest.raises(BackendUnavailable):
        async with StreamUpstream("b", await server(hangs_up)).stream("POST", "/", [], b"", 2):
            pass
