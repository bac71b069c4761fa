"""Where the gateway's time goes on the warm path: three component measurements behind docs/benchmarks.md.

    .venv/bin/python -m loadtests.components [--code LABEL=DIR ...] [--requests 3000] [--json PATH]

- `forward`: one forwarded infer in the Triton adapter (`TritonAdapter.forward`: httpx in the repository today),
  sequential requests against a real Triton: CPU of the calling process per request (the gateway's side of the
  hop) and round trip. One subprocess per checkout given with `--code` (default: this repository), run with
  `python -P` and that checkout first on PYTHONPATH, so each measures its own adapter code and environment.
  `aiohttp` (when installed) is measured the same way as a reference client.
- `logic`: the gateway's own code on the warm path, in process: its ASGI app called directly with a stub
  adapter that answers at once (no network, no HTTP server), per checkout: CPU per request.
- `server`: the HTTP server alone, open loop at `--rate`: uvicorn configured as `gateway.server` configures it
  (httptools, uvloop) with a trivial ASGI app, against a bare httptools asyncio Protocol writing the same
  answer, and the same Protocol writing headers and body in two writes (as uvicorn does): CPU per request
  and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httptools

from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import free_port
from loadtests.harness import (
    Target,
    code_version,
    emit,
    http_request,
    loadavg,
    machine_info,
    percentile,
    pool_for,
    run_loop,
    run_phase,
)
from loadtests.overhead import (
    MODEL,
    MODEL_NAMES,
    check_answer,
    request_body,
    stop_process,
    warm,
)

REPO = Path(__file__).resolve().parent.parent
PATH = f"/v2/models/{MODEL}/infer"
ANSWER = b'{"model_name":"m001","outputs":[]}'

# ---------------------------------------------------------------------------------------------- workers
# Each runs in its own process: `python -P -m loadtests.components --worker KIND ARGS...`.


async def _forward_worker(kind: str, url: str, n: int) -> dict[str, Any]:
    body, expected = request_body(16)
    headers = [("content-type", "application/json")]
    call: Callable[[], Awaitable[tuple[int, bytes, str]]]
    info: dict[str, Any] = {}
    if kind == "adapter":
        from adapters.base import ForwardRequest
        from adapters.triton import TritonAdapter

        adapter = TritonAdapter("triton-0", url)
        request = ForwardRequest("kserve", "POST", MODEL, None, "infer", body, headers, 30.0)

        async def call() -> tuple[int, bytes, str]:
            r = await adapter.forward(request)
            return r.status, r.body, dict(r.headers).get("content-encoding", "")

        import adapters

        info["adapters"] = str(Path(adapters.__file__).parent)
        info["sniffio"] = importlib.util.find_spec("sniffio") is not None
    elif kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept")
        )
        timeout = aiohttp.ClientTimeout(30)

        async def call() -> tuple[int, bytes, str]:
            async with session.post(url + PATH, data=body, headers=dict(headers), timeout=timeout) as r:
                return r.status, await r.read(), r.headers.get("content-encoding", "")

        info["aiohttp"] = aiohttp.__version__
    else:
        raise SystemExit(f"unknown forward kind {kind}")
    status, answer, encoding = await call()
    problem = check_answer(status, answer, expected, encoding.encode())
    if problem is not None:
        raise SystemExit(f"{kind}: {problem}")
    for _ in range(300):
        await call()
    lat: list[float] = []
    cpu0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        status, answer, encoding = await call()
        lat.append((time.perf_counter() - t) * 1e3)
        if status != 200:
            raise SystemExit(f"{kind}: status {status}")
    cpu = (time.process_time() - cpu0) / n * 1e6
    lat.sort()
    if kind == "aiohttp":
        await session.close()
    return {
        "cpu_us_per_request": round(cpu, 1),
        "round_trip_ms": {"p50": round(percentile(lat, 50), 4), "p99": round(percentile(lat, 99), 4)},
        "content_encoding": encoding or "none",
        **info,
    }


async def _logic_worker(redis_url: str, n: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    import gateway
    from adapters.base import ForwardResponse
    from gateway.app import Gateway
    from gateway.settings import Settings
    from placement.settings import PlacementSettings

    body, _ = request_body(16)
    response = ForwardResponse(200, [("content-type", "application/json")], ANSWER)

    class Stub:
        backend_id = "triton-0"

        async def forward(self, request: object) -> ForwardResponse:
            return response

    stub = Stub()
    statuses: list[int] = []
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": list(headers),
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    client = aioredis.from_url(redis_url)
    gw = Gateway(Settings(admin_token="bench", placement=PlacementSettings(redis_prefix="modelyard")), client)
    await gw.start()
    try:
        gw.placer.adapter = lambda backend: stub  # type: ignore[assignment,method-assign,return-value]
        for _ in range(2000):
            await gw(scope(), receive, send)
        statuses.clear()
        cpu0 = time.process_time()
        for _ in range(n):
            await gw(scope(), receive, send)
        cpu = (time.process_time() - cpu0) / n * 1e6
    finally:
        await gw.stop()
    if statuses != [200] * n:
        raise SystemExit(f"logic: unexpected statuses {sorted(set(statuses))}")
    return {"cpu_us_per_request": round(cpu, 1), "gateway": str(Path(gateway.__file__).parent)}


def _uvicorn_worker(port: int) -> None:
    import uvicorn

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    # As gateway.server configures it.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        http="httptools",
        loop="none",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )
    run_loop(uvicorn.Server(config).serve())


class _RawHttp(asyncio.Protocol):
    """A bare HTTP/1.1 server: httptools parser, one fixed answer per request, no task, no ASGI."""

    split = False
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(ANSWER)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.split:  # headers and body in two writes, as uvicorn sends them
            self.transport.write(self.head)
            self.transport.write(ANSWER)
        else:
            self.transport.write(self.head + ANSWER)


def _raw_worker(port: int, split: bool) -> None:
    class Proto(_RawHttp):
        pass

    Proto.split = split

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port, backlog=2048)
        async with server:
            await server.serve_forever()

    run_loop(serve())


def worker(argv: Sequence[str]) -> int:
    kind, *rest = argv
    if kind == "forward":
        result = run_loop(_forward_worker(rest[0], rest[1], int(rest[2])))
    elif kind == "logic":
        result = run_loop(_logic_worker(rest[0], int(rest[1])))
    elif kind == "uvicorn":
        _uvicorn_worker(int(rest[0]))
        return 0
    elif kind in ("raw", "raw-split"):
        _raw_worker(int(rest[0]), kind == "raw-split")
        return 0
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------- main


def _run_worker(code: Path, *args: str, timeout: float = 600) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=f"{code}{os.pathsep}{REPO}")
    cmd = [sys.executable, "-P", "-m", "loadtests.components", "--worker", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"worker {args} for {code} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _start_server(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-P", "-m", "loadtests.components", "--worker", kind, str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_process(proc)
    raise SystemExit(f"{kind} server did not answer")


async def _measure_servers(targets: list[Target], n: int, rounds: int, rate: float) -> dict[str, Any]:
    out: dict[str, dict[str, list[float]]] = {t.name: {"lat": [], "cpu": [], "sys": []} for t in targets}
    try:
        for t in targets:
            await t.pool.top_up(2)
            await run_phase(t, 300, rate)
        for r in range(rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for t in order:
                ph = await run_phase(t, n, rate)
                if any(s != 200 for s in ph.status):
                    raise SystemExit(f"{t.name}: non-200 answers")
                out[t.name]["lat"] += ph.latency_ms
                out[t.name]["cpu"].append(ph.server_cpu_s)
                out[t.name]["sys"].append(ph.server_sys_s)
    finally:
        for t in targets:
            t.pool.close()
        await asyncio.sleep(0.05)
    result = {}
    for name, d in out.items():
        lat = sorted(d["lat"])
        total = len(lat)
        result[name] = {
            "requests": total,
            "latency_ms": {"p50": round(percentile(lat, 50), 4), "p99": round(percentile(lat, 99), 4)},
            "cpu_us_per_request": round(sum(d["cpu"]) / total * 1e6, 1),
            "sys_cpu_us_per_request": round(sum(d["sys"]) / total * 1e6, 1),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    p = argparse.ArgumentParser(prog="python -m loadtests.components", description=__doc__.split("\n\n")[0])
    p.add_argument("--code", action="append", default=[], metavar="LABEL=DIR", help="checkouts to measure")
    p.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the server measurement")
    p.add_argument("--rate", type=float, default=200.0, help="request rate of the server measurement")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = p.parse_args(argv)
    codes: list[tuple[str, Path]] = []
    for spec in args.code or [f"repo={REPO}"]:
        label, _, where = spec.partition("=")
        if not label or not Path(where).is_dir():
            raise SystemExit(f"--code wants LABEL=DIR, got {spec!r}")
        codes.append((label, Path(where).resolve()))

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load_before = loadavg()
    code_at_start = code_version()
    body, expected = request_body(16)
    forward: dict[str, Any] = {}
    logic: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="modelyard-components-") as tmp,
        LocalStack(Path(tmp), MODEL_NAMES, tritons=1) as stack,
    ):
        stack.add_gateway()
        stack.register(capacity=len(MODEL_NAMES))
        warm(stack.gateways[0].url, PATH, body, expected, "the model through the gateway")
        triton = stack.tritons[0].url
        for _ in range(2):  # twice, interleaved, to see the spread
            for label, code in codes:
                r = _run_worker(code, "forward", "adapter", triton, str(args.requests))
                forward.setdefault(label, []).append(r)
                print(f"forward {label}: {r}", file=sys.stderr)
            try:
                import aiohttp  # noqa: F401

                r = _run_worker(REPO, "forward", "aiohttp", triton, str(args.requests))
                forward.setdefault("aiohttp (reference)", []).append(r)
                print(f"forward aiohttp: {r}", file=sys.stderr)
            except ImportError:
                pass
            for label, code in codes:
                assert stack.redis.url
                r = _run_worker(code, "logic", stack.redis.url, str(args.requests * 5))
                logic.setdefault(label, []).append(r)
                print(f"logic {label}: {r}", file=sys.stderr)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        targets = []
        for kind in ("uvicorn", "raw", "raw-split"):
            proc, url = _start_server(kind)
            procs.append(proc)
            targets.append(Target(kind, url, pool_for(url), http_request(url, PATH, body), [proc.pid]))
        servers = run_loop(_measure_servers(targets, args.requests, args.rounds, args.rate))
    finally:
        for proc in procs:
            stop_process(proc)

    result = {
        "benchmark": "gateway components (loadtests/components.py)",
        "date": date,
        "command": " ".join([".venv/bin/python -m loadtests.components", *sys.argv[1:]]),
        "machine": machine_info(),
        "code": code_at_start,
        "codes": {label: str(code) for label, code in codes},
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "forward": forward,
        "logic": logic,
        "server": servers,
    }
    return emit(result, report(result), args.json)


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"modelyard gateway components, {result['date']}",
        f"  machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['python']}",
        f"  load average before/after: {result['loadavg_before']} / {result['loadavg_after']}",
        "",
        "  forward (one infer through TritonAdapter.forward to a real Triton, sequential):",
        "  CPU us/request per run; round trip p50 / p99 ms per run",
    ]
    for label, runs in result["forward"].items():
        cpu = ", ".join(f"{r['cpu_us_per_request']:.0f}" for r in runs)
        rt = ", ".join(f"{r['round_trip_ms']['p50']:.3f} / {r['round_trip_ms']['p99']:.3f}" for r in runs)
        extra = f"  sniffio importable: {runs[0]['sniffio']}" if "sniffio" in runs[0] else ""
        lines.append(f"    {label:<22} CPU {cpu:<14} round trip {rt}{extra}")
    lines += ["", "  logic (the gateway's ASGI app in process, stub adapter): CPU us/request per run"]
    for label, runs in result["logic"].items():
        lines.append(f"    {label:<22} " + ", ".join(f"{r['cpu_us_per_request']:.1f}" for r in runs))
    lines += ["", "  server (trivial answer, open loop): CPU us/request (kernel part), latency p50 / p99 ms"]
    for name, s in result["server"].items():
        lines.append(
            f"    {name:<22} CPU {s['cpu_us_per_request']:6.1f} ({s['sys_cpu_us_per_request']:.1f})   "
            f"latency {s['latency_ms']['p50']:.3f} / {s['latency_ms']['p99']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
