"""The lean upstream pool against a real socket server on 127.0.0.1 that answers exactly what each test scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable
from adapters.upstream import UpstreamPool
from deploy.localstack.triton import free_port
from tests.waiting import eventually_async

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def each_request(reader: asyncio.StreamReader) -> AsyncIterator[tuple[bytes, bytes]]:
    """(head, body) of each request on a connection, until the client closes it."""
    while True:
        try:
            yield await read_request(reader)
        except asyncio.IncompleteReadError:
            return


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        port = free_port()
        servers.append(await asyncio.start_server(handler, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}"

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def test_keep_alive_reuses_one_connection_and_passes_bytes_both_ways(server) -> None:  # type: ignore[no-untyped-def]
    connections = 0
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            heads.append(head)
            answer = b"\x00\xff" + body
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n"
                b"inference-header-content-length: 7\r\n\r\n%s" % (len(answer), answer)
            )
            await writer.drain()

    pool = UpstreamPool("b", await server(handle))
    for i in range(3):
        resp = await pool.request("POST", "/v2/models/m/infer", [("content-type", "application/json")], b"x%d" % i, 5)
        assert resp.status == 200 and resp.body == b"\x00\xffx%d" % i
        assert ("inference-header-content-length", "7") in resp.headers
    assert connections == 1
    assert b"accept-encoding" not in heads[0].lower() and b"content-type: application/json" in heads[0]
    pool.close()


async def test_a_kept_alive_connection_the_backend_closed_is_replaced_transparently(server) -> None:  # type: ignore[no-untyped-def]
    async def one_request_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # claims keep-alive, then closes
        await writer.drain()
        writer.close()

    pool = UpstreamPool("b", await server(one_request_per_connection))
    for _ in range(3):
        assert (await pool.request("GET", "/v2/models/m", [], b"", 5)).body == b"ok"
    pool.close()


async def test_chunked_answers_are_reassembled_and_encodings_passed_through(server) -> None:  # type: ignore[no-untyped-def]
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await writer.drain()

    resp = await UpstreamPool("b", await server(chunked)).request("GET", "/", [("accept-encoding", "gzip")], b"", 5)
    assert resp.body == b"abcde" and ("content-encoding", "gzip") in resp.headers
    assert all(k != "transfer-encoding" for k, _ in resp.headers)


async def test_no_answer_in_time_is_a_backend_timeout(server) -> None:  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    with pytest.raises(BackendTimeout, match=r"did not answer within 0\.2 s"):
        await UpstreamPool("b", await server(silent)).request("POST", "/", [], b"{}", 0.2)


async def test_a_request_cancelled_mid_flight_drops_its_connection(server) -> None:  # type: ignore[no-untyped-def]
    """A hedge's loser is cancelled while its answer is still due: that answer must never reach the next request,
    so the connection is closed, not put back in the pool."""
    connections = 0
    first_seen = asyncio.Event()

    async def late_then_prompt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        while True:
            try:
                _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if mine == 1:
                first_seen.set()
                await asyncio.sleep(0.2)  # answers late, on a connection the client gave up
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    pool = UpstreamPool("b", await server(late_then_prompt))
    task = asyncio.create_task(pool.request("POST", "/", [], b"stale", 5))
    await first_seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for i in range(3):
        assert (await pool.request("POST", "/", [], b"fresh%d" % i, 5)).body == b"fresh%d" % i
    assert connections == 2  # the cancelled one was dropped; the next requests share one new connection
    pool.close()


async def test_refused_and_dropped_connections_are_backend_unavailable(server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackendRefused, match="could not be reached"):
        await UpstreamPool("b", f"http://127.0.0.1:{free_port()}").request("GET", "/", [], b"", 2)

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    with pytest.raises(BackendUnavailable, match="closed the connection"):
        await UpstreamPool("b", await server(half_answer)).request("GET", "/", [], b"", 2)


async def test_error_statuses_come_back_as_answers(server) -> None:  # type: ignore[no-untyped-def]
    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b'{"error":"Request for unknown model: \'m\' is not found"}'
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    resp = await UpstreamPool("b", await server(not_found)).request("POST", "/", [], b"{}", 2)
    assert resp.status == 404 and b"is not found" in resp.body


async def test_requests_over_the_connection_limit_wait_their_turn_or_time_out(server) -> None:  # type: ignore[no-untyped-def]
    """With one slot, requests queue in order; one whose deadline passes while it waits is a timeout and gives
    back nothing it did not take, so the slot is still there for the next."""
    release, first_seen = asyncio.Event(), asyncio.Event()
    seen: list[bytes] = []
    connections = 0

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        async for _, body in each_request(reader):
            seen.append(body)
            if body == b"first":
                first_seen.set()
                await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    pool = UpstreamPool("b", await server(gated), max_connections=1)
    first = asyncio.create_task(pool.request("POST", "/", [], b"first", 5))
    await first_seen.wait()
    second = asyncio.create_task(pool.request("POST", "/", [], b"second", 5))
    await eventually_async(lambda: len(pool._waiting) == 1, "`second` to wait for the slot")
    with pytest.raises(BackendTimeout):
        await pool.request("POST", "/", [], b"late", 0.05)  # waits behind both, and gives up
    assert seen == [b"first"]  # the others wait for the slot, not on a second connection
    release.set()
    assert [(await t).body for t in (first, second)] == [b"first", b"second"]
    assert (await pool.request("POST", "/", [], b"third", 5)).body == b"third"
    assert seen == [b"first", b"second", b"third"] and connections == 1
    pool.close()
