"""Warm requests while the same Triton loads and evicts other models: warm p99 with and without churn.

    .venv/bin/python -m loadtests.churn [--rate 40] [--requests 800] [--rounds 3] [--json out.json]
    make bench-churn ARGS='--rounds 3 --json /tmp/churn.json'

What it does:
- starts a LocalStack: a real redis-server, two Triton servers from the nvidia-pytriton wheel, and two
  `modelyard serve` processes with registries of their own (Redis key prefixes): `grpc` has Triton 0 registered
  with its `grpc_url` (model control over gRPC, the default whenever a backend has one), `http` has Triton 1
  registered without one (model control over Triton's HTTP repository API, as before issue 12). With
  `--baseline DIR`, a gateway run from that checkout takes `http`'s place as `base`, with gRPC control on
  Triton 1: an A/B of two gateway versions in one run (`--gateway-code DIR` runs both from DIR instead);
- each backend holds 3 models (`capacity.models: 3`): the warm model `m001` (pinned, so never evicted), and two
  of the churn models;
- phases (`--phases`), in `--rounds` rounds in rotating order: `quiet-grpc`, `churn-grpc`, `quiet-http`,
  `churn-http` (or `quiet-base`, `churn-base`), and `quiet-direct`, `churn-direct`, whose warm requests go to
  Triton 0 itself while the `grpc` gateway churns on it (Triton's own share of the tail). Each
  sends `--requests` warm requests at `--rate` per second, open loop from a timer thread, latency from the
  *scheduled* send time (loadtests.overhead's client), every answer checked (200, from m001, right output);
  during a `churn-*` phase a thread sends, every `--churn-interval` seconds, a request to the next churn model
  (m002, m003, m004, m005, m002, ...) on the same gateway: it is cold, so the gateway evicts the least recently
  used churn model and loads it on the same Triton, a load and an eviction per cycle;
- a warm request that fails is counted, not fatal, in `churn-http` phases (with control over HTTP, warm requests
  wait behind loads); in other phases any wrong answer stops the run;
- reports warm p50/p99 per phase kind, the churn cycles done (each must have been cold) and the ratio
  churn p99 / quiet p99 per control protocol (the issue's target: within 2x over gRPC).

The machines have 2 cores shared with other work: compare phases within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from loadtests.harness import (
    Phase,
    Target,
    code_version,
    emit,
    http_request,
    loadavg,
    percentile,
    pool_for,
    raise_on_errors,
    run_header,
    run_loop,
    run_phase,
    summarize,
)
from loadtests.overhead import (
    MODEL,
    check_phase,
    request_body,
    warm,
)

CHURN_MODELS = ("m002", "m003", "m004", "m005")
MODELS = ("m000", "m001", *CHURN_MODELS)
# The warm model and two churn models: a load evicts the churn model used longest ago, never the warm one (its use
# reaches Redis in batches, every 0.5 s, so with one churn slot the one just loaded could look more recent).
CAPACITY = 3
# `direct`: the warm requests go to Triton 0 itself, the churn through the `grpc` gateway: Triton's own share.
# `base`: with --baseline, a gateway of another checkout in place of `http`, on Triton 1 with gRPC control.
KINDS = (
    "quiet-grpc",
    "churn-grpc",
    "quiet-http",
    "churn-http",
    "quiet-direct",
    "churn-direct",
    "quiet-base",
    "churn-base",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.churn", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=40.0, help="warm requests per second, open loop")
    p.add_argument("--requests", type=int, default=800, help="warm requests per phase")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the four phases, in rotating order")
    p.add_argument("--churn-interval", type=float, default=1.5, help="seconds between churn cycles")
    p.add_argument("--values", type=int, default=16, help="FP32 values per warm request")
    p.add_argument("--json", type=Path, help="write the whole result here")
    p.add_argument(
        "--gateway-code",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the gateways from this checkout (e.g. `git archive REV | tar -x -C DIR`), for before/after runs",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="in place of the `http` gateway, one run from this checkout with gRPC control on Triton 1 (phases "
        "quiet-base, churn-base): an A/B of two gateway versions in one run",
    )
    p.add_argument("--phases", nargs="+", choices=KINDS, default=None, help="measure only these phases")
    p.add_argument("--workdir", type=Path, help="keep the stack's files here (default: a temporary directory)")
    args = p.parse_args(argv)
    absent = "-http" if args.baseline else "-base"  # Triton 1 serves one of the two
    if args.phases is None:
        args.phases = [k for k in KINDS if not k.endswith(absent)]
    if any(k.endswith(absent) for k in args.phases):
        p.error("the -base phases need --baseline, and the -http phases can't run with it")
    return args


@dataclass
class Churn:
    """Cold requests to the churn models, one every `interval` seconds, from a thread, until stopped."""

    url: str
    interval: float
    start_index: int = 0
    cycles: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        body = request_body(1)[0]
        i = self.start_index
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                name = CHURN_MODELS[i % len(CHURN_MODELS)]
                r = client.post(f"/v2/models/{name}/infer", content=body, headers={"content-type": "application/json"})
                self.cycles.append(
                    {
                        "model": name,
                        "status": r.status_code,
                        "cold": r.headers.get("x-modelyard-cold") == "1",
                        "seconds": round(time.monotonic() - began, 3),
                    }
                )
                i += 1
                self._stop.wait(max(0.0, began + self.interval - time.monotonic()))


def register(stack: LocalStack, gw: GatewayProcess, triton: int, grpc_control: bool) -> None:
    t = stack.tritons[triton]
    spec: dict[str, Any] = {"kind": "triton", "url": t.url, "capacity": {"models": CAPACITY}}
    if grpc_control:
        spec["grpc_url"] = t.grpc_url
    with stack.admin(gw) as admin:
        admin.put(f"/admin/backends/triton-{triton}", json=spec).raise_for_status()
        for name in MODELS:
            # The warm model is pinned: never evicted, also in `direct` phases, where the gateway doesn't see its use.
            spec = {"runtime": "triton", "pinned": True} if name == MODEL else {"runtime": "triton"}
            admin.put(f"/admin/models/{name}", json=spec).raise_for_status()


async def measure(
    targets: dict[str, Target], gateways: dict[str, GatewayProcess], args: argparse.Namespace, expected: list[float]
) -> dict[str, Any]:
    phases: dict[str, list[Phase]] = {k: [] for k in KINDS}
    cycles: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    failed: dict[str, list[str]] = {k: [] for k in KINDS}
    rounds: list[dict[str, Any]] = []
    next_churn = {"grpc": 0, "http": 0, "base": 0}
    for target in targets.values():
        await target.pool.top_up(4)
        raise_on_errors(check_phase(await run_phase(target, 100, args.rate), expected))
    kinds = [k for k in KINDS if k in args.phases]
    for r in range(args.rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        summary: dict[str, Any] = {"round": r + 1, "order": order, "phases": {}}
        for kind in order:
            protocol = kind.split("-")[1]
            target = targets[protocol]
            control = "grpc" if protocol == "direct" else protocol  # the gateway that loads and evicts
            await target.pool.top_up(4)
            churn = None
            if kind.startswith("churn"):
                churn = Churn(gateways[control].url, args.churn_interval, next_churn[control])
                churn.start()
            try:
                ph = await run_phase(target, args.requests, args.rate)
            finally:
                if churn is not None:
                    churn.stop()
            errors = check_phase(ph, expected)
            if kind != "churn-http":
                raise_on_errors(errors)
            failed[kind] += errors
            if churn is not None:
                next_churn[control] += len(churn.cycles)
                cycles[kind] += churn.cycles
                bad = [c for c in churn.cycles if c["status"] != 200]
                if bad and kind != "churn-http":
                    raise SystemExit(f"{kind}: churn requests failed: {bad[:5]}")
            phases[kind].append(ph)
            s = sorted(ph.latency_ms)
            summary["phases"][kind] = {
                "p50": round(percentile(s, 50), 3),
                "p99": round(percentile(s, 99), 3),
                "churn_cycles": len(churn.cycles) if churn is not None else 0,
                "failed": len(errors),
            }
            print(
                f"round {r + 1}/{args.rounds} {kind:<11} warm p50 {percentile(s, 50):8.2f} ms  "
                f"p99 {percentile(s, 99):8.2f} ms  churn cycles {summary['phases'][kind]['churn_cycles']}",
                file=sys.stderr,
            )
        rounds.append(summary)
    for target in targets.values():
        target.pool.close()
    await asyncio.sleep(0.05)
    results: dict[str, Any] = {}
    for kind in kinds:
        lat = [x for ph in phases[kind] for x in ph.latency_ms]
        results[kind] = {
            "requests": len(lat),
            "failed": len(failed[kind]),
            "failures": failed[kind][:5],
            "latency_ms": summarize(lat),
        }
        if kind.startswith("churn"):
            c = cycles[kind]
            results[kind]["churn"] = {
                "cycles": len(c),
                "cold": sum(1 for x in c if x["cold"]),
                "cycle_seconds_median": sorted(x["seconds"] for x in c)[len(c) // 2] if c else None,
            }
    ratios = {
        p: round(results[f"churn-{p}"]["latency_ms"]["p99"] / results[f"quiet-{p}"]["latency_ms"]["p99"], 2)
        for p in ("grpc", "http", "direct", "base")
        if f"churn-{p}" in results and f"quiet-{p}" in results
    }
    return {"results": results, "p99_churn_over_quiet": ratios, "rounds": rounds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelyard-churn-"))
    body, expected = request_body(args.values)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = loadavg()
    code = code_version()  # now: the gateway processes load this code as they start
    with LocalStack(workdir, list(MODELS), tritons=2) as stack:
        # `python -m gateway.cli` imports from its working directory first: --gateway-code's code, when given.
        with contextlib.chdir(args.gateway_code or Path.cwd()):
            gateways = {"grpc": stack.add_gateway(prefix="churngrpc")}
            if args.baseline is None:
                gateways["http"] = stack.add_gateway(prefix="churnhttp")
        if args.baseline is not None:
            with contextlib.chdir(args.baseline):
                gateways["base"] = stack.add_gateway(prefix="churnbase")
        register(stack, gateways["grpc"], 0, grpc_control=True)
        register(
            stack, gateways["http" if args.baseline is None else "base"], 1, grpc_control=args.baseline is not None
        )
        path = f"/v2/models/{MODEL}/infer"
        targets = {}
        for protocol, gw in gateways.items():
            warm(gw.url, path, body, expected, f"{MODEL} through the {protocol} gateway")
            targets[protocol] = Target(
                protocol, gw.url, pool_for(gw.url), http_request(gw.url, path, body), [gw.proc.pid] if gw.proc else []
            )
        t0 = stack.tritons[0]  # the `grpc` gateway's backend
        targets["direct"] = Target("direct", t0.url, pool_for(t0.url), http_request(t0.url, path, body), [t0.pid])
        measured = run_loop(measure(targets, gateways, args, expected))
        warm_loads = {}
        for protocol, gw in gateways.items():
            with stack.admin(gw) as admin:
                warm_loads[protocol] = admin.get(f"/admin/models/{MODEL}").raise_for_status().json()["loads"]
        if warm_loads["grpc"] != 1:
            raise SystemExit(f"the warm model was loaded {warm_loads['grpc']} times with gRPC control: it was evicted")
    return {
        **run_header("churn", started, code, load_before),
        "setup": {
            "rate": args.rate,
            "requests_per_phase": args.requests,
            "rounds": args.rounds,
            "churn_interval_s": args.churn_interval,
            "values": args.values,
            "capacity_models": CAPACITY,
            "phases": args.phases,
            "gateway_code": str(args.gateway_code) if args.gateway_code else None,
            "baseline": str(args.baseline) if args.baseline else None,
            "warm_model_loads": warm_loads,
        },
        **measured,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"churn benchmark, commit {result['code']['commit']}, {result['machine']['cores']} cores, "
        f"load average {result['loadavg_before']} -> {result['loadavg_after']}",
        f"  {'phase':<12}{'requests':>9}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'max ms':>10}  churn",
    ]
    for kind, r in result["results"].items():
        lat = r["latency_ms"]
        churn = r.get("churn")
        extra = f"  {churn['cycles']} cycles ({churn['cold']} cold)" if churn else ""
        extra += f", {r['failed']} warm requests failed" if r["failed"] else ""
        lines.append(
            f"  {kind:<12}{r['requests']:>9}{lat['p50']:>10.2f}{lat['p99']:>10.2f}{lat['p99.9']:>10.2f}"
            f"{lat['max']:>10.1f}{extra}"
        )
    lines.append(f"  loads of the warm model per gateway: {result['setup']['warm_model_loads']}")
    ratios = ", ".join(f"{p} {x}x" for p, x in result["p99_churn_over_quiet"].items())
    lines.append(f"  warm p99 churn / quiet: {ratios} (target <= 2x for grpc; direct: Triton alone)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
