"""Triton's `generate_stream` through the gateway: the backend's server-sent events relayed one by one.

The model is placed as for `infer` (route, cold load awaited, errors as JSON before anything is sent); then the
backend's status and headers go to the client, and each chunk of its body as soon as it arrives, never
gathered. A client that reads slowly (or not at all) holds the relay back instead of growing it: each chunk's
write waits for uvicorn's flow control (its transport's 64 KiB high-water mark) before the next chunk is read, so
the backend's answer waits in the backend and in the sockets, not in the gateway (test_http_stream_backpressure).
A client that goes away ends the backend's stream too. Not hedged, not retried: a stream is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from adapters.base import ForwardRequest, HttpStreamingAdapter
from gateway.dataplane import Call, DataPlane
from gateway.errors import BadRequest

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def relay_stream(dp: DataPlane, call: Call, receive: Receive, send: Send) -> tuple[int, str]:
    """Answer `call` (an HTTP request whose answer streams) with the backend's answer as it comes.

    Returns (the backend's status, the backend). Raises modelyard errors only before anything was sent."""
    model, backend, cold = await dp.place(call)
    adapter = dp.placer.adapter(backend)
    if not isinstance(adapter, HttpStreamingAdapter):
        raise BadRequest(f"model {model!r} runs on a backend that does not stream over HTTP")
    request = ForwardRequest(
        call.protocol, call.method, model, call.version, call.op, call.body, call.headers, dp.settings.backend_timeout
    )
    usage = dp.placer.usage
    usage.start(model, backend)
    try:
        async with adapter.stream_http(request) as resp:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
            headers += [(b"x-modelyard-model", model.encode()), (b"x-modelyard-backend", backend.encode())]
            if cold:
                headers.append((b"x-modelyard-cold", b"1"))
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            relay = asyncio.ensure_future(_relay(resp.chunks, send))
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (relay, gone):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if relay.done() and not relay.cancelled() and relay.exception() is None:
                await send({"type": "http.response.body", "body": b""})
            return resp.status, backend
    finally:
        usage.finish(model, backend)


async def _relay(chunks: Any, send: Send) -> None:
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
