"""A small TCP proxy on 127.0.0.1 that a test controls, to put faults between a gateway and Redis or a Triton.

It runs its own asyncio loop in a thread so that synchronous tests can drive it. Modes:
- `forward()`: pass bytes both ways (the default);
- `latency(seconds)`: delay every chunk in both directions;
- `refuse()`: close new connections at once (as a dead peer's RST would look to the client);
- `cut()`: close every open connection (new ones still follow the mode);
- `blackhole()`: accept new connections and never answer (bytes are read and dropped); open connections stop
  forwarding too.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "forward"
        self.delay = 0.0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy")
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()  # cleared while blackholed; touched only on the loop
        self._flowing.set()

    # -- control (from the test's thread) --------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def forward(self) -> None:
        self._set("forward", 0.0)

    def latency(self, seconds: float) -> None:
        self._set("forward", seconds)

    def refuse(self) -> None:
        self._set("refuse", 0.0)

    def blackhole(self) -> None:
        self._set("blackhole", 0.0)

    def _set(self, mode: str, delay: float) -> None:
        self.mode, self.delay = mode, delay
        self._loop.call_soon_threadsafe(self._flowing.clear if mode == "blackhole" else self._flowing.set)

    def cut(self) -> None:
        self._call(self._cut())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(10)

    # -- the loop's side ------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            await self._drain_forever(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)

    async def _drain_forever(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await self._flowing.wait()  # blackholed: held, never delivered, until the mode changes or a cut
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
