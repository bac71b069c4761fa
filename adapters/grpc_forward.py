"""Forwarding of one gRPC call to a backend as raw bytes, shared by the gRPC-speaking adapters.

One `grpc.aio` channel per backend (one HTTP/2 connection carrying every concurrent call), created on first
use and closed by `aclose`. Requests and responses are bytes: no (de)serializer runs, so the backend gets
the client's message as it was sent and the client gets the backend's as it was answered.

Status handling: OK and every status the backend answers come back as a `ForwardResponse` (`status` = the
code's number, `details` = its message); the adapter decides which of them mean "I don't hold this model".
The call's own deadline expiring raises `BackendTimeout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio

from adapters.base import ForwardResponse
from adapters.errors import BackendTimeout

# Responses can be as big as the backend makes them (a model's outputs); grpc's default receive limit is 4 MiB.
# Requests are bounded by the gateway's own receive limit before they get here.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_retries", 0),  # the data plane decides about retries; the channel must not resend bodies
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)
# Metadata the gRPC stack itself owns: never copied from a backend's answer to the client's.
_RESERVED = ("grpc-", ":")
_RESERVED_KEYS = frozenset({"content-type", "user-agent", "te", "date", "server"})


def to_grpc_metadata(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata for grpc: values of binary `-bin` keys go back to bytes (they travel as latin-1 strings)."""
    return tuple((k, v.encode("latin-1")) if k.endswith("-bin") else (k, v) for k, v in headers)


def from_grpc_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[tuple[str, str]]:
    """Metadata from grpc as (lower-case key, str) pairs; bytes values as latin-1; grpc's own keys left out."""
    out: list[tuple[str, str]] = []
    for key, value in metadata or ():
        k = key.lower()
        if k.startswith(_RESERVED) or k in _RESERVED_KEYS:
            continue
        out.append((k, value.decode("latin-1") if isinstance(value, bytes) else value))
    return out


class GrpcStream:
    """A `grpc.aio` stream-stream call as an `adapters.base.BackendStream`: messages relayed as they come."""

    def __init__(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        self._call = call

    async def write(self, message: bytes) -> None:
        await self._call.write(message)

    async def done_writing(self) -> None:
        await self._call.done_writing()

    async def responses(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._call.read()
            if message is grpc.aio.EOF:
                return
            assert isinstance(message, bytes)
            yield message

    async def status(self) -> tuple[int, str]:
        code = await self._call.code()
        return code.value[0], await self._call.details() or ""

    def cancel(self) -> None:
        self._call.cancel()


class GrpcForwarder:
    """Raw-bytes unary calls to one backend's gRPC endpoint `target` ("host:port")."""

    def __init__(self, backend_id: str, target: str) -> None:
        self.backend_id = backend_id
        self.target = target
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    def _open_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            # Created here, inside the running event loop it will serve.
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return self._channel

    def _method(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        method = self._methods.get(path)
        if method is None:
            # No serializers: the request and the response stay bytes.
            method = self._methods[path] = self._open_channel().unary_unary(path)
        return method

    def stream(self, path: str, metadata: Sequence[tuple[str, str]], timeout: float | None) -> GrpcStream:
        """A bidirectional stream on `path`, on the backend's one channel (see `adapters.base.BackendStream`)."""
        method: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = self._open_channel().stream_stream(path)
        return GrpcStream(method(metadata=to_grpc_metadata(metadata), timeout=timeout))

    async def call(
        self, path: str, body: bytes, metadata: Sequence[tuple[str, str]], timeout: float
    ) -> ForwardResponse:
        call = self._method(path)(body, metadata=to_grpc_metadata(metadata), timeout=timeout)
        try:
            response = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                rpc = path.rsplit("/", 1)[-1]
                raise BackendTimeout(
                    f"backend {self.backend_id} did not answer {rpc} over gRPC within {timeout:.3g} s", self.backend_id
                ) from exc
            return ForwardResponse(
                code.value[0], from_grpc_metadata(exc.initial_metadata()), b"", exc.details() or code.name
            )
        return ForwardResponse(0, from_grpc_metadata(initial), response)

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        self._methods.clear()
        if channel is not None:
            await channel.close()
