"""A byte-level TCP relay in Python: the floor for what one extra Python hop costs on this machine.

    python -m loadtests.relay --port 9000 --upstream 127.0.0.1:8000

Every accepted connection gets its own upstream connection, and bytes are copied both ways as they come
(asyncio Protocols on uvloop when installed; no HTTP parsing, no buffering, no copies beyond the kernel's).
`loadtests.overhead --floor` measures it in front of Triton next to the gateway: whatever the gateway adds
beyond the relay is the cost of its own work (HTTP parsing, ASGI, routing, the upstream client), and the
relay's own figure is what no Python proxy can go under here. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence


class _Upstream(asyncio.Protocol):
    def __init__(self, downstream: asyncio.Transport) -> None:
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.downstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream.close()


class _Downstream(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self._connecting: asyncio.Task[None] | None = None  # kept referenced while it runs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        downstream = self.transport
        try:
            _, upstream = await loop.create_connection(lambda: _Upstream(downstream), self.host, self.port)
        except OSError:
            self.transport.close()
            return
        if downstream.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        self.upstream = upstream
        if self.pending:  # what came before the upstream connection was up
            assert upstream.transport is not None
            upstream.transport.write(b"".join(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(port: int, upstream: str) -> None:
    host, _, up_port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Downstream(host, int(up_port)), "127.0.0.1", port, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"relay 127.0.0.1:{port} -> {upstream}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT", help="where to relay to")
    args = p.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
