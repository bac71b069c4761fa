"""A lean HTTP/1.1 keep-alive pool for the data-plane forward path to plain-HTTP backends.

httpx's client path cost about 1.7 ms per forwarded request on these machines (loadtests/overhead.py and
docs/benchmarks.md); this pool costs a fraction of that.

One pool per backend. Each connection is an asyncio Protocol parsed by httptools (the parser uvicorn already
uses); a request is one `transport.write` of pre-built bytes and one future. Idle connections are a LIFO list,
so taking one is O(1); a connection the backend closes is dropped when it closes (event driven), not polled on
every request. Only the headers the caller passes go out: no default Accept-Encoding, User-Agent or Accept.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import httptools

from adapters.base import ForwardResponse
from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable
from adapters.http_forward import HOP_BY_HOP as _HOP_BY_HOP

HOP_BY_HOP = frozenset(h.encode("latin-1") for h in _HOP_BY_HOP)


class _Closed(Exception):
    """The connection closed before a whole answer came; `reused` and `got_bytes` decide a retry."""

    def __init__(self, why: str, got_bytes: bool) -> None:
        super().__init__(why)
        self.got_bytes = got_bytes


class _Connection(asyncio.Protocol):
    """What `Endpoint` needs of a connection: whether it is closed, and how to close it."""

    closed: bool

    def close(self) -> None:
        raise NotImplementedError


_C = TypeVar("_C", bound=_Connection)


def request_head(method: str, path: str, hostport: bytes, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 request head: only the headers given, `host`, and `content-length` where there is a body."""
    parts = [method.encode("latin-1"), b" ", path.encode("latin-1"), b" HTTP/1.1\r\nhost: ", hostport]
    for k, v in headers:
        parts += (b"\r\n", k.encode("latin-1"), b": ", v.encode("latin-1"))
    if body or method in ("POST", "PUT", "PATCH"):
        parts += (b"\r\ncontent-length: ", str(len(body)).encode())
    parts.append(b"\r\n\r\n")
    return b"".join(parts)


class Endpoint(Generic[_C]):
    """One backend's address (`http://host:port`) and its idle keep-alive connections of one kind: what
    `UpstreamPool` and `adapters.upstream_stream.StreamUpstream` share."""

    def __init__(self, backend_id: str, url: str, connection: Callable[[], _C]) -> None:
        parts = urlsplit(url)
        self.backend_id = backend_id
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.hostport = f"{self.host}:{self.port}".encode("latin-1")
        self._connection = connection
        self._idle: list[_C] = []

    def _take(self) -> _C | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _open(self) -> _C:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(self._connection, self.host, self.port)
        except OSError as exc:
            raise BackendRefused(
                f"backend {self.backend_id} could not be reached: {type(exc).__name__}: {exc}", self.backend_id
            ) from exc
        return conn

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class _Conn(_Connection):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._waiter: asyncio.Future[ForwardResponse] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._got_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_Closed(f"unparsable answer: {exc}", True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Closed(f"connection closed: {exc or 'by the backend'}", self._got_bytes))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in HOP_BY_HOP:
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        response = ForwardResponse(self.parser.get_status_code(), self._headers, b"".join(self._body))
        self._headers, self._body, self._got_bytes = [], [], False
        if not self.parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def send(self, data: bytes, deadline: float) -> asyncio.Future[ForwardResponse]:
        """Write a request; the future has its answer, or raises `_Closed`, or `TimeoutError` at `deadline`
        (on the loop's clock). A timer on the future is cheaper than `asyncio.timeout` per request."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        timer = loop.call_at(deadline, _expire, waiter)
        waiter.add_done_callback(lambda _: timer.cancel())
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


def _expire(waiter: asyncio.Future[ForwardResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamPool(Endpoint[_Conn]):
    """Keep-alive connections to one backend (`http://host:port`)."""

    def __init__(self, backend_id: str, url: str, max_connections: int = 512) -> None:
        super().__init__(backend_id, url, _Conn)
        # Requests in flight, at most `max_connections`; the rest wait in order (a semaphore, without its
        # per-request coroutine and scan when a slot is free, which is nearly always).
        self._max = max_connections
        self._busy = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, timeout: float
    ) -> ForwardResponse:
        data = request_head(method, path, self.hostport, headers, body) + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self._acquire(deadline)
            try:
                while True:
                    conn, reused = self._take(), True
                    if conn is None:
                        async with asyncio.timeout_at(deadline):
                            conn, reused = await self._open(), False
                    try:
                        response = await conn.send(data, deadline)
                    except _Closed as exc:
                        # A kept-alive connection the backend closed just as we wrote: nothing was answered, so
                        # sending again on a new connection is safe. Any other close is the backend's failure.
                        if reused and not exc.got_bytes:
                            continue
                        raise BackendUnavailable(
                            f"backend {self.backend_id} closed the connection: {exc}", self.backend_id
                        ) from None
                    except BaseException:  # timeout or cancellation: the answer may still come, so drop it
                        conn.close()
                        raise
                    if not conn.closed:
                        self._idle.append(conn)
                    return response
            finally:
                self._release()
        except TimeoutError:
            raise BackendTimeout(
                f"backend {self.backend_id} did not answer within {timeout:g} s", self.backend_id
            ) from None

    async def _acquire(self, deadline: float) -> None:
        if self._busy < self._max and not self._waiting:
            self._busy += 1
            return
        slot = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            async with asyncio.timeout_at(deadline):
                await slot  # `_release` hands its slot over: `_busy` stays counted
        except BaseException:
            if slot.done() and not slot.cancelled():
                self._release()  # handed over just as the wait ended: pass it on
            elif slot in self._waiting:  # `_release` may have dropped it already, as cancelled
                self._waiting.remove(slot)
            raise

    def _release(self) -> None:
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self._busy -= 1
