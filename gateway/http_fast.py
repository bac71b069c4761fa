"""uvicorn's httptools protocol with a shorter path for data-plane requests: one `write` per answer.

Profiled under perf_analyzer at concurrency 8 (docs/benchmarks.md), half of the gateway's busy time was in the
`write` system calls; uvicorn writes an answer in two (status line and headers, then the body), which also wakes
the client twice. For the data plane's requests (`HttpDataPlane.handles`: KServe v2 and TF Serving REST), this
protocol skips uvicorn's per-request machinery (`RequestResponseCycle`, its `asyncio.Event`, the ASGI messages
written one by one) and writes each answer, headers and body, in one `transport.write`. The same ASGI app runs,
with the same scope, so every behaviour is the app's as before; only uvicorn's proxy-headers middleware is left
out (it rewrites the scope's client and scheme, which the data plane does not read).

Only a request that can be served whole from one buffered body takes this path: GET or POST to a data-plane path
other than `generate_stream` (answers streamed as they come), with a Content-Length within `max_body` (required
for POST) and never chunked, so the buffer is bounded (anything else gets the app's own answer through uvicorn's
path), no `Expect: 100-continue`, no upgrade, no concurrency limit, and no earlier request still being answered
on the connection (pipelined requests queue behind it through uvicorn's own pipeline). Keep-alive, its timeout,
pipelining, graceful shutdown (the task is in the server's set) and the default headers (`date`, `server`) stay
uvicorn's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

log = logging.getLogger("uvicorn.error")

_CONTENT_LENGTH = b"content-length"
_500 = (
    STATUS_LINE[500] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\n"
    b"Internal Server Error"
)


class _Cycle:
    """One request on the short path: its scope, its buffered body, and its answer, written once."""

    __slots__ = (
        "_gone",
        "body",
        "disconnected",
        "head",
        "keep_alive",
        "length",
        "message_event",
        "proto",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(self, proto: DataPlaneProtocol, scope: dict[str, Any], keep_alive: bool) -> None:
        self.proto = proto
        self.scope = scope
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.head: list[bytes] | None = None
        self.length: int | None = None  # the answer's Content-Length, when the app gave one
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.message_event = self  # uvicorn's connection_lost calls `cycle.message_event.set()`
        self._gone: asyncio.Future[None] | None = None

    def set(self) -> None:
        """The connection closed (uvicorn's `connection_lost`): a pending `receive` says http.disconnect."""
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    async def run(self, app: Callable[..., Any]) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self._fail()

    def _fail(self) -> None:
        """A 500 when nothing was written yet, and the connection closed either way (as uvicorn does)."""
        transport = self.proto.transport
        if not self.response_complete and not self.disconnected and not transport.is_closing():
            transport.write(_500)
        transport.close()

    async def receive(self) -> dict[str, Any]:
        body = self.body
        if body is not None and not self.disconnected:
            self.body = None  # type: ignore[assignment]
            return {"type": "http.request", "body": body[0] if len(body) == 1 else b"".join(body), "more_body": False}
        # The whole body was read: as with uvicorn, the next receive waits for the client to go away.
        if not self.disconnected and not self.response_complete:
            self._gone = asyncio.get_running_loop().create_future()
            await self._gone
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        proto = self.proto
        if proto.flow.write_paused and not self.disconnected:
            await proto.flow.drain()
        if self.disconnected or proto.transport.is_closing():
            self.disconnected = True  # a pipelined request took `cycle` from us: uvicorn tells only that one
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self.response_started = True
            head = [STATUS_LINE[message["status"]]]
            for name, value in proto.server_state.default_headers:
                head += (name, b": ", value, b"\r\n")
            for name, value in message.get("headers", ()):
                if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header name or value.")
                name = name.lower()
                if name == _CONTENT_LENGTH:
                    self.length = int(value)
                elif name == b"connection" and b"close" in value.lower():
                    self.keep_alive = False
                elif name == b"transfer-encoding":
                    raise RuntimeError("the short path writes whole answers, not chunked ones")
                head += (name, b": ", value, b"\r\n")
            self.head = head
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent.")
        if message.get("more_body", False):
            raise RuntimeError("the short path writes whole answers, not streamed ones")
        body = message.get("body", b"")
        out = self.head
        assert out is not None
        if self.length is None:
            out += (_CONTENT_LENGTH, b": ", str(len(body)).encode(), b"\r\n")
        elif self.length != len(body):
            raise RuntimeError("Response content length differs from Content-Length")
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", body)
        proto.transport.write(b"".join(out))
        self.response_complete = True
        if not self.keep_alive:
            proto.transport.close()
        proto.on_response_complete()


class DataPlaneProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=data_plane_protocol(...))`: see the module's docstring."""

    handles: Callable[[str], bool] = staticmethod(lambda _path: False)
    max_body = 0

    def on_headers_complete(self) -> None:
        cycle = self._short(self.parser.get_method())
        if cycle is None:
            super().on_headers_complete()
            return
        self.cycle = cycle  # type: ignore[assignment]

    def _short(self, method: bytes) -> _Cycle | None:
        """A cycle for the short path when this request may take it, else None."""
        if method not in (b"POST", b"GET") or self.expect_100_continue or self.limit_concurrency is not None:
            return None
        current = self.cycle
        if (current is not None and not current.response_complete) or self.parser.should_upgrade():
            return None
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        if self.root_path or not self.handles(path) or path.endswith("/generate_stream"):
            return None
        length = None
        for k, v in self.headers:
            if k == _CONTENT_LENGTH:
                length = v
            elif k == b"transfer-encoding":
                return None  # a body of unknown size (chunked): buffered here it would have no bound
        if (length is None and method == b"POST") or (
            length is not None and (not length.isdigit() or int(length) > self.max_body)
        ):
            return None  # malformed or too large: the app answers it through uvicorn's path
        scope = self.scope
        scope["method"] = method.decode("ascii")
        http_version = self.parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        return _Cycle(self, scope, http_version != "1.0" and self.parser.should_keep_alive())  # type: ignore[arg-type]

    def _data_plane_app(self) -> Callable[..., Any]:
        """The app without uvicorn's proxy-headers middleware: it rewrites the scope's client and scheme from
        X-Forwarded-* headers, which the data plane never reads."""
        app = self.app
        return app.app if isinstance(app, ProxyHeadersMiddleware) else app

    def on_body(self, body: bytes) -> None:
        cycle: object = self.cycle
        if type(cycle) is _Cycle:
            cycle.body.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: object = self.cycle
        if type(cycle) is _Cycle:
            context = contextvars.Context() if self.config.reset_contextvars else None
            task = self.loop.create_task(cycle.run(self._data_plane_app()), context=context)
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        super().on_message_complete()


def data_plane_protocol(handles: Callable[[str], bool], max_body: int) -> type[DataPlaneProtocol]:
    """The protocol class for uvicorn, taking the short path for the paths `handles` accepts."""
    return type("DataPlaneProtocol", (DataPlaneProtocol,), {"handles": staticmethod(handles), "max_body": max_body})
