"""Prototype: the cheapest gRPC forwarders grpcio allows, floors for the gateway's gRPC data plane (issue 12, 1).

    .venv/bin/python -m loadtests.prototypes.grpc_forward --mode sync|aio --listen 127.0.0.1:PORT --upstream HOST:PORT

Every unary call, whatever its method, is forwarded as raw bytes (no (de)serializer on either side) to one
upstream over one channel, with its metadata and the time left of its deadline; the upstream's status and details
come back as they were. No routing, no model lookup, no metrics: what is measured is grpcio's own machinery.
- `sync`: `grpc.server` with a thread pool (`--threads`), a blocking call on a sync channel per request;
- `aio`: `grpc.aio.server` on the default asyncio loop (grpc.aio does not run on uvloop), awaiting an aio channel.
`loadtests.grpc_overhead --prototype sync --prototype aio` measures both next to direct Triton and the gateway.
Binds only the `--listen` address (127.0.0.1 in the benchmarks). Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
_SKIP = ("grpc-", ":")


def _metadata(context: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() if not k.startswith(_SKIP) and k != "user-agent")


class SyncForwarder(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.methods: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        upstream = self.methods.get(path)
        if upstream is None:
            upstream = self.methods[path] = self.channel.unary_unary(path)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                left = context.time_remaining()  # 9.2e18 s when the client set no deadline (grpc.aio says None)
                timeout = left if left < 1e9 else None
                return bytes(upstream(request, metadata=_metadata(context), timeout=timeout))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")  # type: ignore[attr-defined]
                raise  # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(forward)


class AioForwarder(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.methods: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        upstream = self.methods.get(path)
        if upstream is None:
            upstream = self.methods[path] = self.channel.unary_unary(path)

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            try:
                return bytes(await upstream(request, metadata=_metadata(context), timeout=context.time_remaining()))
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise  # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(forward)


def serve_sync(listen: str, upstream: str, threads: int) -> None:
    channel = grpc.insecure_channel(upstream, options=_OPTIONS[:2])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=_OPTIONS)
    server.add_generic_rpc_handlers((SyncForwarder(channel),))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    channel.close()


async def serve_aio(listen: str, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream, options=_OPTIONS[:2])
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((AioForwarder(channel),))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    await channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtests.prototypes.grpc_forward", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("sync", "aio"), required=True)
    p.add_argument("--listen", required=True, help="host:port to serve on (127.0.0.1 in benchmarks)")
    p.add_argument("--upstream", required=True, help="host:port of the gRPC server to forward to")
    p.add_argument("--threads", type=int, default=8, help="sync mode: request threads")
    args = p.parse_args(argv)
    if args.mode == "sync":
        serve_sync(args.listen, args.upstream, args.threads)
    else:
        asyncio.run(serve_aio(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
