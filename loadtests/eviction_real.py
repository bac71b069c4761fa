"""Eviction policies on real Tritons: the same Zipf sequence through `modelyard serve --eviction P`, beside the
simulator's prediction for exactly that sequence and capacity.

    .venv/bin/python -m loadtests.eviction_real [--models 40] [--requests 150] [--policies lru,nextuse,gdsf]
        [--json docs/benchmarks/eviction-real-N.json]
    make bench-eviction ARGS='--json /tmp/eviction.json'

What it does:
- draws one request sequence from `loadtests.sim.trace.zipf_trace` (Zipf `--alpha`, `--models` models, seeded;
  below 5,000/10,000 requests the trace has no bursts and no popularity shift);
- starts a LocalStack (a real redis-server, `--tritons` Triton servers from the nvidia-pytriton wheel, all on
  127.0.0.1); for each policy, in turn: unloads every model from the Tritons, starts a fresh `modelyard serve
  --eviction P` under a fresh Redis key prefix, registers the backends (`capacity.models: --slots` each) and the
  models, and sends the sequence through it **one request at a time** (each after the previous answer), every
  answer checked (200);
- counts, per policy: the real loads from Triton's own load log (each model's `initialize` writes a line, as
  tests/conftest.py `new_loads`), the unloads from its unload log, the requests the gateway marked cold
  (`x-modelyard-cold`), and the seconds the client waited on cold requests;
- runs the simulator (`loadtests.sim`, the same policy objects) on the same sequence and capacity, with lru,
  gdsf, nextuse and Belady's MIN: `paced` spaces the requests 1 s apart with 0.5 s loads (one at a time, as sent);
  `replay` uses each real run's own send times and its median cold-request time as the load time; also request by
  request (which requests were cold in one and warm in the other), and with `CommitGaps`, the gap the gateway
  learned at a load's commit before the fix (docs/benchmarks.md "Eviction on real Tritons");
- `--report JSON` prints the report of a saved run again (with the current simulator), running nothing.

The machine is shared and busy: loads and misses are the robust figures; seconds are reported but noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.stack import LocalStack
from loadtests.overhead import request_body
from loadtests.realstack import (
    add_stack_args,
    equal_trace,
    fresh_gateway,
    gap_check,
    learned,
    prewarm_counters,
    result_of,
    run_header,
    save,
    sim_summary,
)
from loadtests.sim.engine import Simulation
from loadtests.sim.run import POLICIES, simulate, split
from loadtests.sim.trace import Trace, zipf_trace
from placement.arrivals import update_gap
from placement.clock import FakeClock
from placement.eviction import EVICTIONS
from placement.policy import MostFreeFirst

SIM_POLICIES = ("lru", "gdsf", "nextuse", "belady")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.eviction_real", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=40, help="models registered (Zipf ranks)")
    p.add_argument("--requests", type=int, default=150, help="requests in the sequence")
    p.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--policies", default="lru,nextuse,gdsf", help="real runs, in this order")
    p.add_argument(
        "--prewarm",
        default="off",
        choices=["off", "on"],
        help="the gateways' --prewarm (off: eviction alone)",
    )
    add_stack_args(p, slots=2)
    args = p.parse_args(argv)
    args.policies = [x for x in args.policies.split(",") if x]
    unknown = [x for x in args.policies if x not in EVICTIONS]
    if unknown:
        p.error(f"--policies: unknown {', '.join(unknown)} (known: {', '.join(EVICTIONS)})")
    if args.models < 2 or args.requests < 1 or args.tritons < 1 or args.slots < 1:
        p.error("--models >= 2, --requests, --tritons and --slots >= 1")
    if args.tritons * args.slots >= args.models:
        p.error("the capacity (--tritons x --slots) must be below --models, or nothing is ever evicted")
    return args


def sequence(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The models (all Zipf ranks) and the request sequence, in order."""
    trace = zipf_trace(args.alpha, models=args.models, requests=args.requests, seed=args.seed)
    return sorted(trace.sizes), [m for _, m in trace.requests]


def timed_trace(label: str, times: Sequence[float], seq: Sequence[str], models: Sequence[str], cost: float) -> Trace:
    """`seq` at `times`, equal sizes (so the size-aware policies weigh only predicted use and cost)."""
    return equal_trace(label, list(zip(times, seq, strict=True)), models, cost)


def predict(trace: Trace, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    backends = split(args.tritons, args.tritons * args.slots)
    return {p: sim_summary(simulate(trace, backends, p)) for p in SIM_POLICIES}


class CommitGaps(Simulation):
    """The simulation with the gap the gateway learned on a cold request before the `prewarm` merge (runs 1 and 2 found
    it): the load's commit set the model's last use to the load's end (`_COMMIT`, now in
    `placement/store/scripts.py`, no longer does), so the request that waited for it taught a gap of
    `served_after` seconds instead of the time since the model's previous request."""

    served_after = 0.03

    def request(self, model: str) -> None:
        cold = model not in self.copies
        old = self.gaps.get(model)
        super().request(model)
        if cold:
            ready = self.copies[model].ready_at
            gap = update_gap(old, ready, ready + self.served_after, 1)
            if gap is not None:
                self.gaps[model] = gap


def commit_gaps_misses(trace: Trace, tritons: int, slots: int, policy: str) -> int:
    clock = FakeClock(0.0)
    sim = CommitGaps(trace, split(tritons, tritons * slots), MostFreeFirst(), POLICIES[policy](trace, clock), clock)
    return sim.run().misses


def sim_cold(trace: Trace, tritons: int, slots: int, policy: str) -> list[int]:
    """Which requests of `trace` the simulator serves cold (1) under `policy`: to compare request by request."""
    clock = FakeClock(0.0)
    sim = Simulation(trace, split(tritons, tritons * slots), MostFreeFirst(), POLICIES[policy](trace, clock), clock)
    cold = []
    for t, model in trace.requests:
        sim._advance(t)  # finish the loads due by then, as `Simulation.run` does
        cold.append(int(model not in sim.copies))
        sim.request(model)
    return cold


def agreement(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per real run: where its cold requests first differ from the simulator's, and how many differ."""
    seq, s = result["sequence"], result["setup"]
    models = [f"m{i:05d}" for i in range(s["models"])]
    out = {}
    for r in result["real"]:
        row: dict[str, Any] = {}
        for label, times, cost in (
            ("paced", [float(i) for i in range(len(seq))], 0.5),
            ("replay", r["sent_s"], r["cold_request_s_median"] or 1.0),
        ):
            sim = sim_cold(
                timed_trace(label, times, seq, models, cost), s["tritons"], s["slots_per_triton"], r["policy"]
            )
            differ = [i for i, (a, b) in enumerate(zip(sim, r["cold"], strict=True)) if a != b]
            row[label] = {"differ": len(differ), "first": differ[0] if differ else None}
            row[label]["commit_gaps_misses"] = commit_gaps_misses(
                timed_trace(label, times, seq, models, cost), s["tritons"], s["slots_per_triton"], r["policy"]
            )
        out[r["policy"]] = row
    return out


def run_policy(
    stack: LocalStack, policy: str, seq: Sequence[str], models: Sequence[str], slots: int, prewarm: str = "off"
) -> dict[str, Any]:
    """One real run: a fresh gateway with `--eviction policy` over empty Tritons, the sequence one at a time."""
    prefix = f"ev{policy}{uuid.uuid4().hex[:6]}"
    gw, marks = fresh_gateway(stack, prefix, ["--eviction", policy, "--prewarm", prewarm], slots, models)
    body = request_body(1)[0]
    sent: list[float] = []
    seconds: list[float] = []
    cold: list[bool] = []
    began = time.monotonic()
    with httpx.Client(base_url=gw.url, timeout=180) as client:
        for i, model in enumerate(seq):
            t0 = time.monotonic()
            r = client.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise SystemExit(f"{policy}: request {i} to {model}: {r.status_code} {r.text[:300]}")
            sent.append(t0 - began)
            seconds.append(time.monotonic() - t0)
            cold.append(r.headers.get("x-modelyard-cold") == "1")
            if (i + 1) % 50 == 0:
                print(f"  {policy}: {i + 1}/{len(seq)} requests, {sum(cold)} cold", file=sys.stderr)
    loaded = marks.new_loads(stack)
    time.sleep(1.0)  # two usage flushes: the last requests' gaps reach Redis
    know = learned(stack.redis.url, prefix)
    prewarms = prewarm_counters(httpx.get(f"{gw.url}/metrics", timeout=30).text)
    # one request at a time: each ends about when the next is sent (the gateways learn gaps from request ends)
    ends = [*sent[1:], time.monotonic() - began]
    cold_s = [s for s, c in zip(seconds, cold, strict=True) if c]
    return {
        "policy": policy,
        "requests": len(seq),
        "triton_loads": len(loaded),
        "triton_unloads": len(marks.new_unloads(stack)),
        "cold_requests": sum(cold),
        "wait_s_cold": round(sum(cold_s), 2),
        "wait_s_all": round(sum(seconds), 2),
        "cold_request_s_median": round(statistics.median(cold_s), 3) if cold_s else None,
        "warm_request_ms_median": round(
            statistics.median(s for s, c in zip(seconds, cold, strict=True) if not c) * 1000, 2
        )
        if not all(cold)
        else None,
        "wall_s": round(time.monotonic() - began, 1),
        "prewarm": prewarm,
        "prewarm_counters": prewarms,
        "learned": know,
        "gap_check": gap_check(list(zip(ends, seq, strict=True)), know["gaps"]),
        "sent_s": [round(t, 3) for t in sent],
        "cold": [int(c) for c in cold],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    models, seq = sequence(args)
    paced = timed_trace("paced", [float(i) for i in range(len(seq))], seq, models, 0.5)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelyard-eviction-"))
    real: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        **run_header("eviction-real"),
        "setup": {
            "models": args.models,
            "requests": len(seq),
            "alpha": args.alpha,
            "seed": args.seed,
            "tritons": args.tritons,
            "slots_per_triton": args.slots,
            "capacity_share": round(args.tritons * args.slots / args.models, 3),
            "prewarm": args.prewarm,
            "distinct_models_requested": len(set(seq)),
        },
        "sequence": seq,
        "paced_prediction": predict(paced, args),
        "real": real,
    }
    with LocalStack(workdir, models, tritons=args.tritons) as stack:
        for policy in args.policies:
            r = run_policy(stack, policy, seq, models, args.slots, args.prewarm)
            replay = timed_trace(f"replay of {policy}", r["sent_s"], seq, models, r["cold_request_s_median"] or 1.0)
            r["replay_prediction"] = predict(replay, args)
            real.append(r)
            print(f"{policy}: {r['triton_loads']} Triton loads, {r['cold_requests']} cold", file=sys.stderr)
            save(result, args.json)
    return result


def report(result: dict[str, Any]) -> str:
    s = result["setup"]
    paced = result["paced_prediction"]
    lines = [
        f"eviction on real Tritons, commit {result['code']['commit']}, {result['machine']['cores']} cores, "
        f"load average {result['loadavg_before']} -> {result['loadavg_after']}",
        f"  Zipf a={s['alpha']} seed={s['seed']}: {s['requests']} requests over {s['models']} models "
        f"({s['distinct_models_requested']} requested), {s['tritons']} Tritons x {s['slots_per_triton']} slots "
        f"({s['capacity_share']:.0%})",
        "",
        "| policy | real Triton loads | real cold requests | real unloads | simulated misses (paced) "
        "| simulated misses (replay) | requests cold in one, warm in the other (paced / replay) "
        "| simulated misses with the old commit gap rule (paced / replay) | cold wait-s (client) | median cold s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    agree = agreement(result)
    for r in result["real"]:
        p = r["policy"]
        a = agree[p]
        lines.append(
            f"| {p} | {r['triton_loads']} | {r['cold_requests']} | {r['triton_unloads']} | {paced[p]['misses']} "
            f"| {r['replay_prediction'][p]['misses']} | {a['paced']['differ']} (first #{a['paced']['first']}) / "
            f"{a['replay']['differ']} (first #{a['replay']['first']}) "
            f"| {a['paced']['commit_gaps_misses']} / {a['replay']['commit_gaps_misses']} "
            f"| {r['wait_s_cold']:.1f} | {r['cold_request_s_median']} |"
        )
    lines.append("")
    lines.append("simulated misses, paced: " + ", ".join(f"{p} {v['misses']}" for p, v in paced.items()))
    for r in result["real"]:
        if "gap_check" in r:  # recorded since run 3
            g = r["gap_check"]
            lines.append(
                f"learned gaps, {r['policy']}: {g['learned']} models (the requests give {g['from_schedule']}); "
                f"{len(g['asked_once'])} for models asked for once, {len(g['under_half'])} under half the true gap"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    print(report(result_of(parse_args(argv), run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
