"""The open-loop harness every benchmark in loadtests/ shares: client, phases, statistics, machine facts.

- `Pool`/`Target`/`run_phase`: an asyncio HTTP/1.1 keep-alive client (httptools parser) that fires request i at
  start + i/rate from a timer thread, whether or not earlier ones have answered, and measures latency from the
  *scheduled* time (no coordinated omission); `Phase` holds one phase's times, answers and CPU figures.
- `add_open_loop_args`: the flags the open-loop benchmarks have in common (rate, requests, rounds, warm-up, quiet
  machine, JSON output, work directory), with the same meaning everywhere.
- CPU accounting (`cpu_split`, `other_cpu_pct`, `wait_for_quiet`): how much of the machine other processes used,
  so that a phase measured during other work can be measured again; never decided on latencies.
- `percentile`/`summarize`, `machine_info`/`code_version`/`loadavg` for the JSON every run records, `run_loop`
  (uvloop when installed) and `raise_on_errors` (a run with a wrong answer stops).

Benchmarks: overhead.py (HTTP), grpc_overhead.py (gRPC, its own client over grpc futures on the same rounds,
statistics and CPU accounting), hedging.py, churn.py, workers.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import httptools


def add_open_loop_args(p: argparse.ArgumentParser, unit: str = "requests", rounds: int = 5) -> None:
    """The flags shared by the open-loop benchmarks; `unit` names what is sent ("requests", "calls")."""
    p.add_argument("--rate", type=float, default=200.0, help=f"{unit} per second in every phase")
    p.add_argument("--requests", type=int, default=2000, help=f"measured {unit} per phase")
    p.add_argument("--rounds", type=int, default=rounds, help="rounds; each has one phase per target")
    p.add_argument("--warmup", type=int, default=500, help=f"unmeasured {unit} per target before round 1")
    p.add_argument("--phase-warmup", type=int, default=50, help=f"unmeasured {unit} before every phase")
    p.add_argument("--values", type=int, default=16, help="FP32 values in the request")
    p.add_argument(
        "--quiet",
        type=float,
        default=10.0,
        metavar="PCT",
        help="before each phase, wait for a 1 s window where other processes use under PCT%% of the machine (0: off)",
    )
    p.add_argument("--quiet-wait", type=float, default=120.0, metavar="S", help="longest wait for --quiet, seconds")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here as JSON")
    p.add_argument("--workdir", type=Path, default=None, help="keep the stack's files and logs here")


def check_open_loop_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rate <= 0 or args.requests < 1 or args.rounds < 1 or args.values < 1:
        p.error("--rate, --requests, --rounds and --values must be positive")


PERCENTILES = (50.0, 90.0, 99.0, 99.9)


CLOCK = time.perf_counter


TICKS = os.sysconf("SC_CLK_TCK")


_T = TypeVar("_T")


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; answers parsed by httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.broken = False
        self._body: list[bytes] = []
        self._encoding = b""
        self._on_done: Callable[[_Conn, int, bytes, bytes, float], None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"unparsable answer: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._fail(f"connection lost: {exc or 'closed by the server'}")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-encoding":
            self._encoding = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        done = CLOCK()
        status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.broken = True
        body = b"".join(self._body)
        encoding = self._encoding
        self._body = []
        self._encoding = b""
        callback, self._on_done = self._on_done, None
        if callback is not None:
            callback(self, status, body, encoding, done)
        if self.broken and self.transport is not None:
            self.transport.close()

    def request(self, data: bytes, on_done: Callable[[_Conn, int, bytes, bytes, float], None]) -> None:
        assert self.transport is not None and self._on_done is None
        self._on_done = on_done
        self.transport.write(data)

    def close(self) -> None:
        self.broken = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, why: str) -> None:
        self.broken = True
        callback, self._on_done = self._on_done, None
        if callback is not None:
            callback(self, -1, why.encode(), b"", CLOCK())
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one target; the most recently used idle one is taken first."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[_Conn] = []
        self.opened = 0

    async def open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        self.opened += 1
        return conn

    def take(self) -> _Conn | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.broken:
                return conn
        return None

    def give_back(self, conn: _Conn) -> None:
        if not conn.broken:
            self.idle.append(conn)

    async def top_up(self, n: int) -> None:
        """At least `n` open idle connections (servers close idle ones: uvicorn after 5 s)."""
        self.idle = [c for c in self.idle if not c.broken]
        for conn in await asyncio.gather(*(self.open() for _ in range(n - len(self.idle)))):
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle = []


@dataclass
class Target:
    name: str
    url: str  # http://host:port
    pool: Pool
    request: bytes  # the whole HTTP request, the same body for every target
    pids: list[int] = field(default_factory=list)  # the server's processes, for CPU accounting


def http_request(url: str, path: str, body: bytes, accept_encoding: str | None = None) -> bytes:
    """The whole request; no Accept-Encoding unless asked (like `tritonclient.http` without compression)."""
    hostport = url.split("://", 1)[1].rstrip("/")
    head = f"POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
    if accept_encoding is not None:
        head += f"Accept-Encoding: {accept_encoding}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


@dataclass
class PhaseTimes:
    """The times of one phase of requests to one target at `rate`, in seconds on CLOCK: what every protocol's
    phase has."""

    target: str
    rate: float
    scheduled: list[float]
    sent: list[float]
    done: list[float]

    @property
    def latency_ms(self) -> list[float]:
        return [(d - s) * 1e3 for d, s in zip(self.done, self.scheduled, strict=True)]

    @property
    def service_ms(self) -> list[float]:
        return [(d - s) * 1e3 for d, s in zip(self.done, self.sent, strict=True)]

    @property
    def send_lag_ms(self) -> list[float]:
        return [(a - s) * 1e3 for a, s in zip(self.sent, self.scheduled, strict=True)]

    @property
    def achieved_rate(self) -> float:
        """Requests completed per second, from the first actual send to the last answer."""
        span = max(self.done) - min(self.sent)
        return len(self.done) / span if span > 0 else math.inf


@dataclass
class Phase(PhaseTimes):
    """One phase of HTTP requests: the times, and each answer's status, body and content-encoding."""

    status: list[int]
    bodies: list[bytes]
    encodings: list[bytes]
    new_connections: int = 0
    server_cpu_s: float = 0.0
    server_sys_s: float = 0.0  # the part of server_cpu_s spent in the kernel
    client_cpu_s: float = 0.0
    other_cpu_pct: float = 0.0  # CPU used by processes outside the benchmark, % of the whole machine


async def run_phase(target: Target, n: int, rate: float, ours: Sequence[int] = ()) -> Phase:
    """Open loop: request i is sent at start + i/rate by a timer thread, wherever the earlier ones are."""
    loop = asyncio.get_running_loop()
    start = CLOCK() + 0.02
    scheduled = [start + i / rate for i in range(n)]
    phase = Phase(target.name, rate, scheduled, [math.nan] * n, [math.nan] * n, [0] * n, [b""] * n, [b""] * n)
    remaining = n
    finished: asyncio.Future[None] = loop.create_future()
    opened_before = target.pool.opened
    stop = threading.Event()

    def complete(i: int, status: int, body: bytes, encoding: bytes, done: float) -> None:
        nonlocal remaining
        phase.status[i] = status
        phase.bodies[i] = body
        phase.encodings[i] = encoding
        phase.done[i] = done
        remaining -= 1
        if remaining == 0 and not finished.done():
            finished.set_result(None)

    def send(conn: _Conn, i: int) -> None:
        def on_done(c: _Conn, status: int, body: bytes, encoding: bytes, done: float) -> None:
            target.pool.give_back(c)
            complete(i, status, body, encoding, done)

        phase.sent[i] = CLOCK()
        conn.request(target.request, on_done)

    async def open_and_send(i: int) -> None:
        try:
            conn = await target.pool.open()
        except OSError as exc:
            phase.sent[i] = CLOCK()
            complete(i, -1, f"connect failed: {exc}".encode(), b"", CLOCK())
            return
        send(conn, i)

    tasks: set[asyncio.Task[None]] = set()

    def fire(i: int) -> None:
        conn = target.pool.take()
        if conn is not None:
            send(conn, i)
        else:
            task = loop.create_task(open_and_send(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def ticker() -> None:
        for i, at in enumerate(scheduled):
            if stop.is_set():
                return
            delay = at - CLOCK()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(fire, i)

    cpu_before = processes_user_sys_s(target.pids)
    client_cpu_before = time.process_time()
    load_before = cpu_split(ours)
    thread = threading.Thread(target=ticker, name=f"ticker-{target.name}", daemon=True)
    thread.start()
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout=n / rate + 30.0)
    except TimeoutError:
        stop.set()
        for i in range(n):
            if math.isnan(phase.done[i]):
                phase.status[i] = -1
                phase.bodies[i] = b"no answer within the phase's deadline"
                phase.done[i] = CLOCK()
                if math.isnan(phase.sent[i]):
                    phase.sent[i] = phase.done[i]
    finally:
        stop.set()
        thread.join()
    phase.client_cpu_s = time.process_time() - client_cpu_before
    cpu_after = processes_user_sys_s(target.pids)
    phase.server_cpu_s = sum(cpu_after) - sum(cpu_before)
    phase.server_sys_s = cpu_after[1] - cpu_before[1]
    phase.other_cpu_pct = other_cpu_pct(load_before, cpu_split(ours))
    phase.new_connections = target.pool.opened - opened_before
    return phase


def processes_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (threads included; gone processes count 0), from /proc."""
    user, system = processes_user_sys_s(pids)
    return user + system


def processes_user_sys_s(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, from /proc/PID/stat."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime and stime: fields 14 and 15 of stat(5)
        system += int(fields[12])
    return user / TICKS, system / TICKS


def machine_cpu_s() -> tuple[float, float]:
    """(busy, wall x cores) CPU seconds of the whole machine since boot, from /proc/stat; steal counts as busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICKS, sum(fields) / TICKS


@dataclass(frozen=True)
class CpuSplit:
    busy: float
    total: float
    ours: float


def cpu_split(ours: Sequence[int]) -> CpuSplit:
    busy, total = machine_cpu_s()
    return CpuSplit(busy, total, processes_cpu_s(ours))


def other_cpu_pct(before: CpuSplit, after: CpuSplit) -> float:
    """CPU used outside the benchmark's processes between two samples, in % of the whole machine."""
    total = after.total - before.total
    if total <= 0:
        return 0.0
    other = (after.busy - before.busy) - (after.ours - before.ours)
    return max(0.0, 100.0 * other / total)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Triton's Python-backend stubs are its children)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found = [pid]
    for p in found:
        found.extend(c for c, parent in parents.items() if parent == p)
    return found


async def wait_for_quiet(ours: Sequence[int], threshold_pct: float, max_wait_s: float) -> float:
    """Wait (up to `max_wait_s`) for a 1 s window where others use under `threshold_pct` of the machine.

    The decision only looks at other processes' CPU, never at latencies, so it biases no target.
    Returns the last window's figure.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_split(ours)
        await asyncio.sleep(1.0)
        pct = other_cpu_pct(before, cpu_split(ours))
        if pct < threshold_pct or time.monotonic() >= deadline:
            return pct


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def pkey(p: float) -> str:
    return f"p{p:g}"


def summarize(values: Sequence[float]) -> dict[str, float]:
    s = sorted(values)
    out = {pkey(p): round(percentile(s, p), 4) for p in PERCENTILES}
    out["mean"] = round(sum(s) / len(s), 4) if s else math.nan
    out["max"] = round(s[-1], 4) if s else math.nan
    return out


def summarize_times(phases: Sequence[PhaseTimes]) -> dict[str, Any]:
    """Requests, latency and send-lag percentiles and the achieved rate of phases of any protocol."""
    lat = [x for ph in phases for x in ph.latency_ms]
    return {
        "requests": len(lat),
        "latency_ms": summarize(lat),
        "send_lag_ms": summarize([x for ph in phases for x in ph.send_lag_ms]),
        "achieved_rate": round(
            sum(len(ph.done) for ph in phases) / sum(len(ph.done) / ph.achieved_rate for ph in phases), 2
        ),
    }


def summarize_phases(phases: Sequence[Phase]) -> dict[str, Any]:
    n = sum(len(ph.done) for ph in phases)
    return {
        **summarize_times(phases),
        "service_ms": summarize([x for ph in phases for x in ph.service_ms]),
        "new_connections": sum(ph.new_connections for ph in phases),
        "content_encodings": sorted({e.decode("latin-1") or "none" for ph in phases for e in ph.encodings}),
        "server_cpu_us_per_request": round(sum(ph.server_cpu_s for ph in phases) / n * 1e6, 1),
        "server_sys_cpu_us_per_request": round(sum(ph.server_sys_s for ph in phases) / n * 1e6, 1),
        "client_cpu_us_per_request": round(sum(ph.client_cpu_s for ph in phases) / n * 1e6, 1),
        "other_cpu_pct_max": round(max(ph.other_cpu_pct for ph in phases), 1),
    }


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions: dict[str, str | None] = {}
    for dist in ("uvicorn", "httptools", "uvloop", "httpx", "httpcore", "nvidia-pytriton"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": mem_gib,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def code_version() -> dict[str, Any]:
    """The commit the gateway under test came from, and request-path files that differ from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "gateway", "adapters", "placement").splitlines(),
    }


def run_header(benchmark: str, started: str, code: dict[str, Any], load_before: list[float]) -> dict[str, Any]:
    """The first keys of a benchmark's JSON: what ran, when, on what machine and code, and how busy it was."""
    return {
        "benchmark": benchmark,
        "started": started,
        "machine": machine_info(),
        "code": code,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def emit(result: dict[str, Any], text: str, path: Path | None) -> int:
    """Print the report and write the JSON: the end of a benchmark's run."""
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {path}")
    return 0


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def pool_for(url: str) -> Pool:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return Pool(host, int(port))


def raise_on_errors(errors: list[str]) -> None:
    if errors:
        shown = "\n  ".join(errors[:10])
        raise SystemExit(f"{len(errors)} wrong answers (first ones):\n  {shown}")


def run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
