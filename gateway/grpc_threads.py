"""`--grpc-server threads`: the gRPC data plane on grpcio's synchronous server, with a bounded thread pool.

Why: grpc.aio's own machinery was most of the gateway's gRPC cost, and a synchronous server forwarding raw bytes
from threads measured faster with a far shorter tail (docs/benchmarks.md, "gRPC data plane"). Each call runs in a
thread of the pool:
- a warm `ModelInfer` / `Predict` that needs nothing but a forward is answered there (`gateway.grpc_fastpath`);
- every other call (cold loads, routes, hedging, sequences, readiness, the gateway's own answers, refusals) runs
  the grpc.aio data plane's own handler (`GrpcDataPlane`) on the event loop, awaited from the thread
  (`asyncio.run_coroutine_threadsafe`) through `LoopContext`, so it behaves exactly as under `--grpc-server aio`;
- a `ModelStreamInfer` stream runs the same way: the loop reads the client's messages through a reader thread
  and the responses come back to the stream's thread through a queue.

Bounds: `threads` calls run at once; a call waiting for a cold load and an open stream each hold a thread (a stream
also a reader thread) for as long as they last. Calls past `threads` wait for a free thread, up to `max_calls` in
all; past that grpc answers RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") at once. When the client
cancels, or its deadline passes, the loop's handler is cancelled as under grpc.aio; a fast-path forward already
sent runs to its answer or its deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

from gateway.grpc_dataplane import (
    Forward,
    GrpcDataPlane,
    GrpcPortError,
    Refuse,
    Stream,
    UnaryMethod,
)
from gateway.grpc_dataplane import _bind_problem as bind_problem
from gateway.grpc_fastpath import Bridge, FastPath, LoopInbox, SyncChannels, time_remaining
from gateway.settings import Settings

# Calls served at once. Warm calls are short, but cold waits and open streams hold a thread each for as long as
# they last; threads are started only when needed, and an idle one costs no CPU.
THREADS = 128
MAX_CALLS = 2048  # calls accepted at once (running and waiting for a thread); past it RESOURCE_EXHAUSTED
_END = object()


class _Aborted(Exception):
    """`LoopContext.abort`: ends the loop's handler; the call's thread aborts the call with it."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)


class LoopContext:
    """What the grpc.aio handlers use of `grpc.aio.ServicerContext`, over a synchronous call's context.

    Initial metadata is kept and sent by the call's thread with the answer; `abort` raises `_Aborted`."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self._metadata = context.invocation_metadata()
        self.initial: Sequence[tuple[str, str | bytes]] | None = None

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float | None:
        return time_remaining(self._context)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.initial = tuple(metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, str | bytes]] = ()
    ) -> None:
        raise _Aborted(code, details, trailing_metadata)


def _finish(context: grpc.ServicerContext, ctx: LoopContext, aborted: _Aborted | None) -> None:
    """Send what the loop's handler said: its initial metadata, and its abort when it aborted."""
    if ctx.initial is not None:
        context.send_initial_metadata(ctx.initial)
    if aborted is not None:
        if aborted.trailing:
            context.set_trailing_metadata(aborted.trailing)
        context.abort(aborted.code, aborted.details)


class ThreadedGrpcServer:
    """The data plane's gRPC server on a thread pool; `start` and `stop` as grpc.aio's server has them."""

    def __init__(
        self,
        grpc_dp: GrpcDataPlane,
        settings: Settings,
        reuseport: bool,
        threads: int = THREADS,
        max_calls: int = MAX_CALLS,
    ) -> None:
        self.grpc_dp = grpc_dp
        self.threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="modelyard-grpc")
        self._readers = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="modelyard-grpc-read")
        self._channels = SyncChannels()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fast: FastPath | None = None
        self._server = grpc.server(
            self._pool,
            handlers=self._handlers(),
            options=[
                ("grpc.so_reuseport", 1 if reuseport else 0),
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
            ],
            maximum_concurrent_rpcs=max_calls,
        )
        host = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
        address = f"{host}:{settings.grpc_port}"
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            why = bind_problem(settings.host, settings.grpc_port) if not reuseport else "grpc could not bind it"
            raise GrpcPortError(f"cannot listen for gRPC on {address} (--grpc-port): {why}")
        self.port = port

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.fast = FastPath(self.grpc_dp, LoopInbox(self._loop), self._channels)
        self._server.start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in flight finish for up to `grace` seconds (the loop keeps running for
        the bridged ones), then close the backend channels and the pools."""
        stopped = self._server.stop(grace)
        await asyncio.to_thread(stopped.wait)
        self._channels.close()
        self._readers.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- handlers ---------------------------------------------------------------------------------------------
    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        dp = self.grpc_dp
        out = []
        for service, methods in dp.services.items():
            table = {}
            for name, method in methods.items():
                path = f"/{service}/{name}"
                if isinstance(method, Stream):
                    table[name] = grpc.stream_stream_rpc_method_handler(self._stream(dp._stream(path, method)))
                elif isinstance(method, Refuse) and method.streaming:
                    table[name] = grpc.stream_stream_rpc_method_handler(self._stream(dp._refuse_stream(name, method)))
                else:
                    table[name] = grpc.unary_unary_rpc_method_handler(self._unary(service, name, method))
            out.append(grpc.method_handlers_generic_handler(service, table))
        return out

    def _unary(self, service: str, op: str, method: UnaryMethod) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        on_loop = self.grpc_dp._handler(service, op, method)
        path = f"/{service}/{op}"

        def handle(body: bytes, context: grpc.ServicerContext) -> bytes:
            fast = self.fast
            if fast is not None and isinstance(method, Forward):
                plan = fast.plan(method, op, body)
                if plan is not None:
                    try:
                        return fast.serve(plan, method, path, op, body, context)
                    except Bridge:
                        pass
            return self._bridge(on_loop, body, context)

        return handle

    def _bridge(self, on_loop: Callable[[bytes, Any], Any], body: bytes, context: grpc.ServicerContext) -> bytes:
        """Run the grpc.aio handler on the loop and wait for it in this thread."""
        assert self._loop is not None
        ctx = LoopContext(context)
        future = asyncio.run_coroutine_threadsafe(on_loop(body, ctx), self._loop)
        context.add_callback(future.cancel)  # the client went away or its deadline passed
        try:
            answer: bytes = future.result()
        except _Aborted as aborted:
            _finish(context, ctx, aborted)
            raise  # not reached: abort raises
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
            raise  # not reached
        _finish(context, ctx, None)
        return answer

    def _stream(
        self, on_loop: Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]]
    ) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
        def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            assert self._loop is not None
            ctx = LoopContext(context)
            out: queue.SimpleQueue[object] = queue.SimpleQueue()
            future = asyncio.run_coroutine_threadsafe(self._pump(on_loop, requests, ctx, out), self._loop)
            context.add_callback(future.cancel)
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, _Aborted):
                    _finish(context, ctx, item)
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item

        return handle

    async def _pump(
        self,
        on_loop: Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]],
        requests: Iterator[bytes],
        ctx: LoopContext,
        out: queue.SimpleQueue[object],
    ) -> None:
        """On the loop: feed the client's messages to the handler, hand its answers to the stream's thread."""
        try:
            async for message in on_loop(self._read(requests), ctx):
                out.put(message)
        except _Aborted as aborted:
            out.put(aborted)
        except asyncio.CancelledError:
            out.put(_END)
            raise
        except Exception as exc:  # already logged by the handler; the thread ends the call with it
            out.put(exc)
        out.put(_END)

    async def _read(self, requests: Iterator[bytes]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                message = await loop.run_in_executor(self._readers, next, requests, _END)
            except grpc.RpcError:  # the call ended under us (cancelled): the handler is being cancelled too
                raise asyncio.CancelledError from None
            if message is _END:
                return
            assert isinstance(message, bytes)
            yield message
