"""The lean HTTP/1.1 pool's counterpart for answers relayed as they come (Triton's `generate_stream`).

`StreamUpstream` does for `adapters.http_stream.stream_http` (httpx) what `adapters.upstream.UpstreamPool` does
for plain forwarding: keep-alive connections parsed by httptools, one `transport.write` per request, no default
headers. The body is handed over chunk by chunk as the backend writes it; a connection holding
`STREAM_HIGH_CHUNKS` unread chunks stops reading its socket (the backend's TCP window closes, so the backend holds
the rest, not the gateway) and reads again once the reader is down to `STREAM_LOW_CHUNKS`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import httptools

from adapters.errors import BackendTimeout, BackendUnavailable
from adapters.http_stream import StreamedResponse
from adapters.upstream import HOP_BY_HOP, Endpoint, _Closed, _Connection, request_head

STREAM_HIGH_CHUNKS = 16
STREAM_LOW_CHUNKS = 4


class _StreamConn(_Connection):
    """A connection whose answer is read as it comes: `head` resolves with (status, headers) once they are parsed,
    then `next_chunk()` gives the body chunk by chunk (b"" at its end)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.complete = False
        self.head: asyncio.Future[tuple[int, list[tuple[str, str]]]] | None = None
        self._headers: list[tuple[str, str]] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._paused = False
        self._got_bytes = False
        self._lost = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(f"unparsable answer: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end(f"connection closed: {exc or 'by the backend'}")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in HOP_BY_HOP:
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_result((self.parser.get_status_code(), self._headers))

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if len(self._chunks) >= STREAM_HIGH_CHUNKS and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wakeup()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.parser.should_keep_alive():
            self.close()
        self._wakeup()

    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[str, str]]]]:
        assert self.transport is not None
        self.head = asyncio.get_running_loop().create_future()
        self.complete, self._headers, self._got_bytes, self._lost = False, [], False, ""
        self.transport.write(data)
        return self.head

    async def next_chunk(self, timeout: float) -> bytes:
        """The next body chunk; b"" once the body is whole, or the connection ended or stayed silent `timeout`
        seconds (the stream ends there: what was relayed stays relayed)."""
        while not self._chunks:
            if self.complete or self._lost:
                return b""
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake
            except TimeoutError:
                self.close()
                return b""
        chunk = self._chunks.popleft()
        if self._paused and len(self._chunks) <= STREAM_LOW_CHUNKS and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return self.complete and not self.closed and not self._chunks

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _end(self, why: str) -> None:
        self._lost = self._lost or why
        if self.head is not None and not self.head.done():
            self.head.set_exception(_Closed(why, self._got_bytes))
        self._wakeup()

    def _wakeup(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)


class StreamUpstream(Endpoint[_StreamConn]):
    """Keep-alive connections to one backend (`http://host:port`) for answers relayed as they come, the lean
    counterpart of `adapters.http_stream.stream_http` (httpx): same `StreamedResponse`, same errors.

    Errors before the answer's head: `BackendRefused` (no connection), `BackendTimeout` (no head within
    `timeout`), `BackendUnavailable` (closed or unparsable); a kept-alive connection the backend had closed is
    replaced once, as in `UpstreamPool`. After the head, a failure or `timeout` seconds without a chunk just end
    the body. A connection goes back to the idle list only when its answer was read whole."""

    def __init__(self, backend_id: str, url: str) -> None:
        super().__init__(backend_id, url, _StreamConn)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, timeout: float
    ) -> AsyncIterator[StreamedResponse]:
        data = request_head(method, path, self.hostport, headers, body) + body
        conn = await self._send(data, timeout)
        try:
            status, out_headers = conn.head.result() if conn.head is not None else (502, [])
            yield StreamedResponse(status, out_headers, self._body(conn, timeout))
        finally:
            if conn.reusable():
                self._idle.append(conn)
            else:
                conn.close()

    async def _send(self, data: bytes, timeout: float) -> _StreamConn:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    conn, reused = self._take(), True
                    if conn is None:
                        conn, reused = await self._open(), False
                    try:
                        await conn.send(data)
                        return conn
                    except _Closed as exc:
                        if reused and not exc.got_bytes:
                            continue  # closed by the backend while idle: nothing was answered
                        raise BackendUnavailable(
                            f"backend {self.backend_id} closed the connection: {exc}", self.backend_id
                        ) from None
                    except BaseException:
                        conn.close()
                        raise
        except TimeoutError:
            raise BackendTimeout(
                f"backend {self.backend_id} did not answer within {timeout:g} s", self.backend_id
            ) from None

    @staticmethod
    async def _body(conn: _StreamConn, timeout: float) -> AsyncIterator[bytes]:
        while chunk := await conn.next_chunk(timeout):
            yield chunk
