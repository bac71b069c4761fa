"""What hedging does to the tail: a model whose calls sometimes stall, with and without a hedge policy.

    .venv/bin/python -m loadtests.hedging [--rate 100] [--requests 3000] [--rounds 3] [--json out.json]
    make bench-hedging ARGS='--rate 100 --requests 3000'

What it does:
- starts a LocalStack: a real redis-server, two Triton servers from the nvidia-pytriton wheel, one
  `modelyard serve`; one Python-backend model, `stall`, whose instances sleep `--stall-ms` (200) on
  `--stall-fraction` (2%) of their calls, chosen by a seeded hash of each instance's call count
  (`deploy.localstack.models.Stall`; `--instances` per server, 4 by default, so that a stalled call holds up
  one instance, not the server);
- registers the model with a copy on each Triton (`min_copies: 2`) and a route `hedged` to it with
  `hedge: {after_ms: --after-ms (default null: the model's observed p95), max_extra_percent: --max-extra}`;
- measures two targets, `plain` (POST /v2/models/stall/infer: no policy) and `hedged` (POST
  /v2/models/hedged/infer), in `--rounds` rounds of one phase each (order alternating), each phase `--requests`
  requests at `--rate` per second, open loop from a timer thread with latency from the *scheduled* send time
  (loadtests.overhead's client: no coordinated omission); every answer must be 200 from the right model;
- reports p50 / p99 / p99.9 per target, and the extra load hedging caused: hedges the gateway sent per request
  (`modelyard_hedges_total{result="sent"}`) and, from the Tritons' own counters, inference executions per
  request (a cancelled hedge loser still runs to the end on Triton).

The issue's target: p99.9 cut tenfold for at most 5% extra requests. Figures only mean something on a quiet
machine; run it only then, and record the command with them in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.models import Stall
from deploy.localstack.stack import GatewayProcess, LocalStack
from loadtests.harness import (
    PERCENTILES,
    Phase,
    Pool,
    Target,
    code_version,
    http_request,
    loadavg,
    machine_info,
    pkey,
    run_phase,
    summarize,
)

MODEL = "stall"
ROUTE = "hedged"
TARGETS = {"plain": MODEL, "hedged": ROUTE}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.hedging", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="requests per second, open loop")
    p.add_argument("--requests", type=int, default=3000, help="requests per phase")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one phase per target")
    p.add_argument("--stall-ms", type=float, default=200.0)
    p.add_argument("--stall-fraction", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--instances", type=int, default=4, help="model instances per Triton")
    p.add_argument("--after-ms", type=float, default=None, help="hedge delay; absent: the observed p95")
    p.add_argument("--max-extra", type=float, default=5.0, help="max_extra_percent of the hedge policy")
    p.add_argument("--warmup", type=int, default=300, help="requests through the route before measuring")
    p.add_argument("--json", type=Path, help="write the whole result here")
    p.add_argument("--workdir", type=Path, help="keep the stack's files here (default: a temporary directory)")
    return p.parse_args(argv)


def body() -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()


def check(phase: Phase) -> list[str]:
    """Every answer 200 and from the stall model (it adds 0: it is model 0 of its repository)."""
    errors = []
    for i, (status, raw) in enumerate(zip(phase.status, phase.bodies, strict=True)):
        if status != 200:
            errors.append(f"{phase.target} request {i}: status {status}: {raw[:200]!r}")
            continue
        outputs = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
        if outputs.get("MODEL_NAME") != [MODEL] or outputs.get("OUTPUT0") != [1.0, 2.0, 3.0, 4.0]:
            errors.append(f"{phase.target} request {i}: wrong answer {outputs}")
    return errors


def gateway_counter(gw: GatewayProcess, line_start: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def triton_executions(stack: LocalStack) -> float:
    """Inference executions of the model on both Tritons (successful ones; a cancelled request still runs)."""
    total = 0.0
    for t in stack.tritons:
        for line in httpx.get(t.metrics_url, timeout=10).text.splitlines():
            if line.startswith("nv_inference_exec_count{") and f'model="{MODEL}"' in line:
                total += float(line.split()[-1])
    return total


def counters(stack: LocalStack, gw: GatewayProcess) -> dict[str, float]:
    """What a phase's figures per request are taken from: hedges the gateway sent and won, and Triton's runs."""
    return {
        "hedges_per_request": gateway_counter(gw, 'modelyard_hedges_total{result="sent"}'),
        "hedges_won_per_request": gateway_counter(gw, 'modelyard_hedges_total{result="won"}'),
        "hedges_refused_per_request": gateway_counter(gw, 'modelyard_hedges_total{result="refused_budget"}'),
        "hedges_no_copy_per_request": gateway_counter(gw, 'modelyard_hedges_total{result="no_copy"}'),
        "triton_executions_per_request": triton_executions(stack),
    }


def setup(stack: LocalStack, gw: GatewayProcess, args: argparse.Namespace) -> None:
    with stack.admin(gw) as admin:
        for i, t in enumerate(stack.tritons):
            spec = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": 2}}
            admin.put(f"/admin/backends/triton-{i}", json=spec).raise_for_status()
        admin.put(
            f"/admin/models/{MODEL}", json={"runtime": "triton", "min_copies": 2, "max_copies": 2}
        ).raise_for_status()
        copies = admin.post(f"/admin/models/{MODEL}/load").raise_for_status().json()["copies"]
        if len([c for c in copies if c["state"] == "ready"]) != 2:
            raise SystemExit(f"expected a ready copy of {MODEL} on each Triton, got {copies}")
        hedge = {"after_ms": args.after_ms, "max_extra_percent": args.max_extra}
        route = {"splits": [{"model": MODEL, "weight": 1}], "hedge": hedge}
        admin.put(f"/admin/routes/{ROUTE}", json=route).raise_for_status()
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        for _ in range(args.warmup):  # the latencies behind `after_ms: null`
            c.post(f"/v2/models/{ROUTE}/infer", content=body()).raise_for_status()


async def measure(stack: LocalStack, gw: GatewayProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    host, port = gw.url.removeprefix("http://").split(":")
    pools = {name: Pool(host, int(port)) for name in TARGETS}
    rounds = []
    for r in range(args.rounds):
        order = list(TARGETS) if r % 2 == 0 else list(reversed(TARGETS))
        phases = {}
        for name in order:
            target = Target(
                name, gw.url, pools[name], http_request(gw.url, f"/v2/models/{TARGETS[name]}/infer", body())
            )
            await pools[name].top_up(8)
            before = counters(stack, gw)
            phase = await run_phase(target, args.requests, args.rate)
            errors = check(phase)
            if errors:
                raise SystemExit("wrong answers:\n" + "\n".join(errors[:20]))
            extra = {k: round((v - before[k]) / args.requests, 4) for k, v in counters(stack, gw).items()}
            phases[name] = {"latency_ms": summarize(phase.latency_ms), **extra}
        rounds.append(phases)
    for pool in pools.values():
        pool.close()
    return rounds


def report(rounds: list[dict[str, Any]]) -> str:
    head = "".join(f"{pkey(p):>9}" for p in PERCENTILES)
    lines = [f"  {'round/target':<16}{head}  hedges/req  won/req  triton runs/req"]
    for i, phases in enumerate(rounds):
        for name, ph in phases.items():
            cells = "".join(f"{ph['latency_ms'][pkey(p)]:>9.2f}" for p in PERCENTILES)
            lines.append(
                f"  {f'{i + 1} {name}':<16}{cells}  {ph['hedges_per_request']:>10.2%}  "
                f"{ph['hedges_won_per_request']:>7.2%}  {ph['triton_executions_per_request']:>15.3f}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelyard-hedging-"))
    stall = Stall(args.stall_ms, args.stall_fraction, args.seed, args.instances)
    with LocalStack(workdir, [MODEL], tritons=2, stalls={MODEL: stall}) as stack:
        gw = stack.add_gateway()
        setup(stack, gw, args)
        rounds = asyncio.run(measure(stack, gw, args))
    return {
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "code": code_version(),
        "loadavg_after": loadavg(),
        "rounds": rounds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(result["rounds"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
