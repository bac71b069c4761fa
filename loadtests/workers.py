"""Throughput of `modelyard serve --workers N` against N, for one warm model on one Triton, closed loop.

    .venv/bin/python -m loadtests.workers [--workers 1,2,3] [--concurrency 16] [--seconds 10] [--rounds 3]
    make bench-workers ARGS='--json /tmp/workers.json'

What it does:
- starts a LocalStack (real redis-server, one Triton from the nvidia-pytriton wheel) and, for each N in
  `--workers`, one `modelyard serve --workers N` sharing the stack's Redis under a key prefix of its own;
- targets: `direct` (Triton's own `/v2/models/m001/infer`, the ceiling) and `workers-N` for each N;
- closed loop: `--concurrency` clients, each on its own keep-alive connection (so the kernel spreads them over the
  workers), sending the next request when the last is answered, for `--seconds`; answers checked (200, m001,
  right output); phases in `--rounds` rounds in rotating order;
- reports requests per second and p50/p99 per target (medians over rounds), and, for gateways, how many
  distinct workers answered (`x-modelyard-worker`).

On a 2-core machine shared by the client, Triton, its Python stub and the workers, throughput stops growing past
N = 1 or 2: the curve says how much headroom a second process finds, not how N scales on a large machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from loadtests.harness import (
    Pool,
    code_version,
    http_request,
    loadavg,
    percentile,
    pool_for,
    run_header,
    run_loop,
)
from loadtests.overhead import (
    MODEL,
    MODEL_NAMES,
    check_answer,
    request_body,
    warm,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,3", help="comma-separated N to measure")
    p.add_argument("--concurrency", type=int, default=16, help="clients, one connection each")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one phase")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--values", type=int, default=16, help="FP32 values per request")
    p.add_argument("--json", type=Path, help="write the whole result here")
    return p.parse_args(argv)


async def closed_loop(
    pool: Pool, request: bytes, expected: list[float], clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` loops of request-answer on connections of their own, for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []
    conns = [await pool.open() for _ in range(clients)]
    loop = asyncio.get_running_loop()
    end = time.perf_counter() + seconds

    async def one(conn: Any) -> None:
        while time.perf_counter() < end and not conn.broken:
            answered: asyncio.Future[tuple[int, bytes, bytes]] = loop.create_future()
            sent = time.perf_counter()
            conn.request(request, lambda c, status, body, enc, done, f=answered: f.set_result((status, body, enc)))
            status, body, enc = await answered
            latencies.append((time.perf_counter() - sent) * 1e3)
            problem = check_answer(status, body, expected, enc)
            if problem is not None:
                errors.append(problem)
                return

    began = time.perf_counter()
    await asyncio.gather(*(one(c) for c in conns))
    took = time.perf_counter() - began
    for c in conns:
        c.close()
    if errors:
        raise SystemExit(f"{len(errors)} wrong answers, e.g. {errors[0]}")
    s = sorted(latencies)
    return {
        "requests": len(s),
        "per_second": round(len(s) / took, 1),
        "p50_ms": round(percentile(s, 50), 3),
        "p99_ms": round(percentile(s, 99), 3),
    }


def workers_answering(url: str, n: int) -> int:
    """Distinct workers answering new connections (up to 20 tries per worker)."""
    seen = set()
    for _ in range(20 * n):
        with httpx.Client(timeout=10) as c:
            seen.add(c.get(f"{url}/healthz").headers.get("x-modelyard-worker", "single"))
        if len(seen) == n:
            break
    return len(seen)


async def measure(
    targets: list[tuple[str, str, bytes]], args: argparse.Namespace, expected: list[float]
) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        shift = r % len(targets)
        order = targets[shift:] + targets[:shift]
        phases = {}
        for name, url, request in order:
            phases[name] = await closed_loop(pool_for(url), request, expected, args.concurrency, args.seconds)
            print(f"round {r + 1}/{args.rounds} {name:<10} {phases[name]}", file=sys.stderr)
        rounds.append({"round": r + 1, "order": [t[0] for t in order], "phases": phases})
    medians = {
        name: {
            k: statistics.median(rnd["phases"][name][k] for rnd in rounds) for k in ("per_second", "p50_ms", "p99_ms")
        }
        for name, _, _ in targets
    }
    return {"medians": medians, "rounds": rounds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ns = [int(x) for x in args.workers.split(",")]
    body, expected = request_body(args.values)
    path = f"/v2/models/{MODEL}/infer"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = loadavg()
    code = code_version()  # now: the gateway processes load this code as they start
    with (
        tempfile.TemporaryDirectory(prefix="modelyard-workers-") as tmp,
        LocalStack(Path(tmp), MODEL_NAMES, tritons=1) as stack,
    ):
        t = stack.tritons[0]
        targets: list[tuple[str, str, bytes]] = []
        answering: dict[str, int] = {}
        for n in ns:
            gw = GatewayProcess(
                stack.redis.url, stack.workdir, token=stack.token, prefix=f"w{n}", extra=["--workers", str(n)]
            )
            gw.start()
            stack.gateways.append(gw)
            with stack.admin(gw) as admin:
                spec = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": 2}}
                admin.put("/admin/backends/triton-0", json=spec).raise_for_status()
                admin.put(f"/admin/models/{MODEL}", json={"runtime": "triton"}).raise_for_status()
            warm(gw.url, path, body, expected, f"the model through --workers {n}")
            answering[f"workers-{n}"] = workers_answering(gw.url, n)
            targets.append((f"workers-{n}", gw.url, http_request(gw.url, path, body)))
        warm(t.url, path, body, expected, "the model on Triton")  # loaded by the first gateway
        targets.insert(0, ("direct", t.url, http_request(t.url, path, body)))
        measured = run_loop(measure(targets, args, expected))
    return {
        **run_header("workers", started, code, load_before),
        "setup": {
            "workers": ns,
            "concurrency": args.concurrency,
            "seconds_per_phase": args.seconds,
            "rounds": args.rounds,
            "values": args.values,
            "distinct_workers_answering": answering,
        },
        **measured,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(f"  {'target':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   (medians of {args.rounds} rounds)")
    for name, m in result["medians"].items():
        print(f"  {name:<12}{m['per_second']:>10.1f}{m['p50_ms']:>10.3f}{m['p99_ms']:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
