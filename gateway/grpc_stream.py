"""KServe's `ModelStreamInfer` through the gateway: one client stream, relayed to the backends' own streams.

Each request message of the client's stream is placed as `ModelInfer` would be (route, sequence affinity, cold
load: the stream waits for it, until its deadline) and written to a stream opened on the chosen backend (one per
backend per client stream, opened on first use, with the client's metadata and remaining deadline). Every
response message a backend sends (a decoupled model's several responses, the final-response flag, errors) is
relayed to the client as soon as it arrives: nothing is buffered, nothing parsed. Request messages are placed
one at a time in order, so a message waiting for a cold load holds back the ones after it, as a busy model
would. When the client half-closes, the backends' streams are half-closed, and the client's stream ends once
all of them have. When the client cancels or its deadline passes, every backend stream is cancelled.

A request the gateway itself cannot place (unknown model, load failed, deadline) is answered in the stream
with a `ModelStreamInferResponse` whose `error_message` says why (and `infer_response` names the model and
request id), as Triton reports a failed request of a stream; the stream goes on. A backend stream that ends
with an error status ends the client's stream with that status. Hedging and retries on another copy do not
apply to streams: a message is sent once, to one copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from adapters.base import BackendStream, StreamingAdapter
from adapters.errors import BackendUnavailable, ModelyardError
from adapters.protowire import encode_len, encode_string, string_fields
from gateway.dataplane import Call, DataPlane
from gateway.errors import NotReady, grpc_status, to_grpc
from gateway.sequences import grpc_sequence

log = logging.getLogger("modelyard.grpc.stream")

STREAM_OP = "ModelStreamInfer"
_END = object()


class StreamAbort:
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


def stream_error(message: str, body: bytes) -> bytes:
    """A `ModelStreamInferResponse` carrying `message` as its error, naming the request's model and id."""
    try:
        found, _ = string_fields(body, (1, 3))
    except ValueError:
        found = {}
    inner = b"".join(encode_string(n, found[n]) for n in (1, 3) if found.get(n))
    return encode_string(1, message) + encode_len(2, inner)


OUT_LIMIT = 16  # response messages held for a client that is not reading


class StreamRelay:
    """One client `ModelStreamInfer` call; `run` yields the response messages to send back."""

    def __init__(
        self,
        dp: DataPlane,
        path: str,
        read: Callable[[bytes], Any],
        rewrite: Callable[[bytes, str], bytes],
        headers: list[tuple[str, str]],
        header: Callable[[str], str | None],
        deadline: float | None,
    ) -> None:
        self.dp = dp
        self.path = path
        self.read = read
        self.rewrite = rewrite
        self.headers = headers
        self.header = header
        self.deadline = deadline
        # Bounded: a client that stops reading stops the relay reading its backends (HTTP/2 flow control then holds the
        # backend back) instead of growing the gateway's memory.
        self.out: asyncio.Queue[object] = asyncio.Queue(maxsize=OUT_LIMIT)
        self.upstreams: dict[str, BackendStream] = {}
        self.readers: list[asyncio.Task[None]] = []
        self.used: set[tuple[str, str]] = set()
        self.backends: list[str] = []

    async def run(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes | StreamAbort]:
        feeder = asyncio.create_task(self._feed(requests), name="modelyard-stream-feed")
        try:
            while True:
                item = await self.out.get()
                if item is _END:
                    return
                assert isinstance(item, bytes | StreamAbort)
                yield item
                if isinstance(item, StreamAbort):
                    return
        finally:
            feeder.cancel()
            for upstream in self.upstreams.values():
                upstream.cancel()
            for task in [feeder, *self.readers]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for model, backend in self.used:
                self.dp.placer.usage.finish(model, backend)

    async def _feed(self, requests: AsyncIterator[bytes]) -> None:
        try:
            async for body in requests:
                await self._one(body)
            for upstream in self.upstreams.values():
                with contextlib.suppress(Exception):
                    await upstream.done_writing()
            await asyncio.gather(*self.readers)
            await self.out.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: end the stream with INTERNAL, and log the traceback
            log.exception("%s failed", self.path)
            err = to_grpc(exc)
            await self.out.put(StreamAbort(err.code, err.message))

    async def _one(self, body: bytes) -> None:
        """Place one request message and write it to its backend's stream; an error goes back in the stream."""
        try:
            if not self.dp.ready:
                raise NotReady("the gateway has not reached Redis yet; try again in a moment")
            ref = self.read(body)
            seq = grpc_sequence(body)
            call = Call(
                "kserve-grpc",
                self.path,
                ref.name,
                ref.version,
                STREAM_OP,
                body,
                self.headers,
                deadline=self.deadline,
                rewrite=self.rewrite,
                header=self.header,
            )
            model, backend, _ = await self.dp.place(call, seq)
            if model != ref.name:
                body = self.rewrite(body, model)
            upstream = self._upstream(backend)
            if (model, backend) not in self.used:
                # Held busy until the stream ends: its copy is not evicted while responses may still come.
                self.used.add((model, backend))
                self.dp.placer.usage.start(model, backend)
            await upstream.write(body)
            if seq is not None and seq.end:
                self.dp.affinity.finished(model, seq)
        except ModelyardError as exc:
            await self.out.put(stream_error(to_grpc(exc).message, body))
        except grpc.aio.AioRpcError:
            pass  # the backend's stream ended: its reader reports how

    def _upstream(self, backend: str) -> BackendStream:
        upstream = self.upstreams.get(backend)
        if upstream is not None:
            return upstream
        adapter = self.dp.placer.adapter(backend)
        if not isinstance(adapter, StreamingAdapter):
            raise BackendUnavailable(f"backend {backend} does not stream over gRPC", backend)
        timeout = None if self.deadline is None else max(0.0, self.deadline - asyncio.get_running_loop().time())
        upstream = self.upstreams[backend] = adapter.open_stream(self.path, self.headers, timeout)
        self.backends.append(backend)
        self.readers.append(asyncio.create_task(self._relay(upstream), name="modelyard-stream-relay"))
        return upstream

    async def _relay(self, upstream: BackendStream) -> None:
        try:
            async for message in upstream.responses():
                await self.out.put(message)
        except grpc.aio.AioRpcError:
            pass  # its status says why, below
        code, details = await upstream.status()
        if code != 0:
            await self.out.put(StreamAbort(grpc_status(code), details))  # as the backend said it
