"""Pre-warming on real Tritons: a slice of the Azure Functions 2019 trace, time compressed, sent open-loop through
`modelyard serve --prewarm off` and `--prewarm on`, beside the simulator's prediction for the same slice.

    .venv/bin/python -m loadtests.prewarm_real [--minutes 30] [--seconds-per-minute 8] [--runs off,on]
        [--json docs/benchmarks/prewarm-real-N.json]
    make bench-prewarm ARGS='--json /tmp/prewarm.json'

What it does:
- picks functions from `../shared/traces/azure-functions-2019` (loadtests.sim.trace.azure_dir) over the trace
  minutes [--start, --start + --minutes): `--timers` invoked exactly once every minute, `--periodic` once every
  k minutes (k 2-5, the same k all along), `--irregular` invoked at least 3 times with no fixed period and at
  most twice in any minute; seeded, so every run gets the same slice;
- turns each minute's count into request times the way timers fire: every function gets a seeded phase inside the
  minute, and its n requests of a minute are spaced 60/n s apart from that phase (so a once-a-minute timer is
  exactly periodic, as the simulator's `--even` spread); then compresses time, one trace minute =
  `--seconds-per-minute` real seconds;
- starts a LocalStack (a real redis-server, `--tritons` Tritons from the nvidia-pytriton wheel, 127.0.0.1) and,
  for each `--runs` setting in turn, empties the Tritons and starts a fresh `modelyard serve --prewarm X` under a
  fresh Redis key prefix (`capacity.models: --slots` per Triton; the gateway's default eviction unless
  `--eviction`), then sends every request **open-loop at its scheduled time** (concurrently where they overlap),
  every answer checked (200);
- measures: the client's latency of every request, its waiting (latency above the run's warm median; summed over
  all requests: "wait-s"), the requests the gateway marked cold (`x-modelyard-cold`), Triton's own load and
  unload logs (loads = demand loads + pre-warms), the gateway's pre-warm counters (`modelyard_prewarm_loads` in
  /metrics), and the load time and arrival gaps the gateway learned (read from Redis at the end);
- runs the simulator (`loadtests.sim`, the same policy and `Prewarmer` objects) on the same compressed slice and
  capacity, every load taking what a cold request waited in the first run (its median, less the warm median): the
  default policy with and without pre-warming, and LRU and Belady's MIN beside them;
- `--report JSON` prints the report of a saved run again, running nothing.

Time compression has a floor: the gateway pre-warms only models whose learned gap is at least 5 s
(`placement.prewarm.Prewarmer.min_gap`) and starts a pre-warm `2 s + load time` before the expected request, on a
0.5 s tick, from last uses flushed every 0.5 s. A once-a-minute timer must keep a gap above 5 s + a margin:
8 s per trace minute does, but then the loader is busy nearly all the time on these machines and a pre-warm,
which starts only when no load is under way, seldom gets a turn (docs/benchmarks.md, "Pre-warming on real
Tritons", run 1); the default is 16 s (run 2). 4 would put every timer under `min_gap`: nothing is pre-warmed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import itertools
import random
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
from loadtests.sim.run import simulate, split
from loadtests.sim.trace import azure_dir
from placement.eviction import EVICTIONS

DEFAULT_EVICTION = "nextuse"  # the gateway's default (gateway/cli.py --eviction); what --eviction '' measures
TIMER, PERIODIC, IRREGULAR = "timer", "periodic", "irregular"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.prewarm_real", description=__doc__.split("\n\n")[0])
    p.add_argument("--start", type=int, default=600, help="first trace minute of the slice (0-based)")
    p.add_argument("--minutes", type=int, default=30, help="trace minutes in the slice")
    p.add_argument("--seconds-per-minute", type=float, default=16.0, help="real seconds per trace minute")
    p.add_argument("--timers", type=int, default=4, help="functions invoked once every minute")
    p.add_argument("--periodic", type=int, default=16, help="functions invoked once every k minutes (2 <= k <= 5)")
    p.add_argument("--irregular", type=int, default=4, help="functions with no fixed period")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", default="off,on", help="--prewarm settings, in this order")
    p.add_argument("--eviction", default="", help="--eviction for the gateway (default: the gateway's own)")
    add_stack_args(p, slots=3)
    args = p.parse_args(argv)
    args.runs = [x for x in args.runs.split(",") if x]
    if any(x not in ("off", "on") for x in args.runs):
        p.error("--runs: a comma-separated list of off and on")
    if args.eviction and args.eviction not in EVICTIONS:
        p.error(f"--eviction: one of {', '.join(EVICTIONS)}")
    if args.minutes < 6 or args.seconds_per_minute <= 0 or args.tritons < 1 or args.slots < 1:
        p.error("--minutes >= 6, --seconds-per-minute > 0, --tritons and --slots >= 1")
    if args.tritons * args.slots >= args.timers + args.periodic + args.irregular:
        p.error("the capacity (--tritons x --slots) must be below the number of functions, or nothing is evicted")
    return args


def read_counts(directory: Path) -> dict[str, list[int]]:
    """Each function's invocations per minute of the day (the trace's `invocations.csv.gz`)."""
    with gzip.open(directory / "invocations.csv.gz", "rt", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return {row[0]: [int(x) if x else 0 for x in row[1:]] for row in reader}


def kind(counts: Sequence[int]) -> str | None:
    """TIMER (once every minute), PERIODIC (once every k minutes, 2 <= k <= 5), IRREGULAR (at least 3 requests,
    no fixed period, at most 2 in a minute), or None (too busy or too sparse for this benchmark)."""
    active = [i for i, n in enumerate(counts) if n]
    if len(active) < 3 or max(counts) > 2:
        return None
    steps = {b - a for a, b in itertools.pairwise(active)}
    if max(counts) == 1 and len(steps) == 1:
        step = steps.pop()
        # the whole slice, not just a stretch of it: a timer that starts or stops midway is not periodic here
        if active[0] < step and active[-1] >= len(counts) - step:
            return TIMER if step == 1 else PERIODIC if step <= 5 else None
        return None
    return IRREGULAR


def pick(counts: dict[str, list[int]], start: int, minutes: int, wanted: dict[str, int], seed: int) -> dict[str, str]:
    """Function -> kind: `wanted[kind]` functions of each kind over the slice, drawn at random (seeded)."""
    by_kind: dict[str, list[str]] = {}
    for fn in sorted(counts):
        k = kind(counts[fn][start : start + minutes])
        if k is not None:
            by_kind.setdefault(k, []).append(fn)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for k, n in wanted.items():
        have = by_kind.get(k, [])
        if len(have) < n:
            raise SystemExit(f"only {len(have)} {k} functions in minutes {start}-{start + minutes}, {n} wanted")
        out.update(dict.fromkeys(sorted(rng.sample(have, n)), k))
    return out


def schedule(
    counts: dict[str, list[int]], functions: Sequence[str], start: int, minutes: int, seed: int
) -> list[tuple[float, str]]:
    """(trace seconds from the slice's start, function), sorted: each function's n requests of a minute spaced
    60/n s apart from its own seeded phase inside the minute, as timers fire."""
    rng = random.Random(seed)
    phase = {fn: rng.uniform(0.0, 60.0) for fn in sorted(functions)}
    out: list[tuple[float, str]] = []
    for fn in functions:
        for m, n in enumerate(counts[fn][start : start + minutes]):
            out.extend((m * 60.0 + (phase[fn] + k * 60.0 / n) % 60.0, fn) for k in range(n))
    return sorted(out)


def compress(requests: Sequence[tuple[float, str]], seconds_per_minute: float) -> list[tuple[float, str]]:
    """Trace seconds to real seconds: one trace minute becomes `seconds_per_minute`."""
    return [(round(t * seconds_per_minute / 60.0, 3), fn) for t, fn in requests]


def the_slice(args: argparse.Namespace) -> tuple[dict[str, str], list[tuple[float, str]]]:
    """The functions (-> kind) and the compressed request schedule of this benchmark."""
    where = azure_dir()
    if where is None:
        raise SystemExit("the Azure trace is absent (../shared/traces/azure-functions-2019 or $MODELYARD_AZURE_TRACE)")
    counts = read_counts(where)
    wanted = {TIMER: args.timers, PERIODIC: args.periodic, IRREGULAR: args.irregular}
    kinds = pick(counts, args.start, args.minutes, wanted, args.seed)
    return kinds, compress(schedule(counts, list(kinds), args.start, args.minutes, args.seed), args.seconds_per_minute)


async def send_all(url: str, requests: Sequence[tuple[float, str]]) -> list[dict[str, Any]]:
    """Every request at its scheduled second (from now), concurrently where they overlap; one row per request."""
    body = request_body(1)[0]
    headers = {"content-type": "application/json"}
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=len(requests) + 1, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as client:
        began = loop.time()

        async def one(at: float, model: str) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, began + at - loop.time()))
            sent = loop.time()
            r = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            took = loop.time() - sent
            if r.status_code != 200:
                raise SystemExit(f"{model} at {at:.1f} s: {r.status_code} {r.text[:300]}")
            cold = r.headers.get("x-modelyard-cold") == "1"
            late = round(sent - began - at, 4)
            return {"at": at, "late": late, "s": round(took, 4), "cold": int(cold), "model": model}

        return list(await asyncio.gather(*(one(at, m) for at, m in requests)))


def waiting(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The client's waiting: each request's latency above the run's warm median, summed; and the cold requests'."""
    warm = [r["s"] for r in rows if not r["cold"]]
    base = statistics.median(warm) if warm else 0.0
    cold = [r["s"] for r in rows if r["cold"]]
    return {
        "warm_ms_median": round(base * 1000, 2) if warm else None,
        "wait_s": round(sum(max(0.0, r["s"] - base) for r in rows), 2),
        "cold_requests": len(cold),
        "wait_s_cold": round(sum(cold), 2),
        "cold_s_median": round(statistics.median(cold), 3) if cold else None,
        "late_s_max": round(max((r["late"] for r in rows), default=0.0), 3),
    }


def run_one(
    stack: LocalStack, args: argparse.Namespace, setting: str, requests: Sequence[tuple[float, str]]
) -> dict[str, Any]:
    models = sorted({m for _, m in requests})
    prefix = f"pw{setting}{uuid.uuid4().hex[:6]}"
    flags = ["--prewarm", setting] + (["--eviction", args.eviction] if args.eviction else [])
    gw, marks = fresh_gateway(stack, prefix, flags, args.slots, models)
    began = time.monotonic()
    rows = asyncio.run(send_all(gw.url, requests))
    wall = time.monotonic() - began
    time.sleep(1.5)  # three pre-warm ticks: the leader settles its last pre-warms (used or wasted) for /metrics
    counters = prewarm_counters(httpx.get(f"{gw.url}/metrics", timeout=30).text)
    know = learned(stack.redis.url, prefix)
    return {
        "prewarm": setting,
        "eviction": args.eviction or DEFAULT_EVICTION,
        "requests": len(rows),
        "triton_loads": len(marks.new_loads(stack)),
        "triton_unloads": len(marks.new_unloads(stack)),
        **waiting(rows),
        "prewarm_counters": counters,
        "load_s_learned_median": round(statistics.median(know["loadsec"].values()), 3) if know["loadsec"] else None,
        "learned": know,
        "gap_check": gap_check(requests, know["gaps"]),
        "wall_s": round(wall, 1),
        "rows": rows,
    }


SIM_POLICIES = ("lru", "{e}", "{e}+prewarm", "belady")


def predict(requests: Sequence[tuple[float, str]], args: argparse.Namespace, load_s: float) -> dict[str, Any]:
    """The simulator on the same compressed slice and capacity, every load taking `load_s`."""
    models = sorted({m for _, m in requests})
    trace = equal_trace("prewarm slice", requests, models, load_s)
    backends = split(args.tritons, args.tritons * args.slots)
    policies = [p.format(e=args.eviction or DEFAULT_EVICTION) for p in SIM_POLICIES]
    return {"load_s": load_s, **{p: sim_summary(simulate(trace, backends, p)) for p in policies}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds, requests = the_slice(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelyard-prewarm-"))
    real: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        **run_header("prewarm-real"),
        "setup": {
            "trace": "azure-functions-2019",
            "start_minute": args.start,
            "minutes": args.minutes,
            "seconds_per_minute": args.seconds_per_minute,
            "seed": args.seed,
            "functions": kinds,
            "requests": len(requests),
            "tritons": args.tritons,
            "slots_per_triton": args.slots,
            "eviction": args.eviction or DEFAULT_EVICTION,
        },
        "schedule": requests,
        "real": real,
    }
    with LocalStack(workdir, sorted(kinds), tritons=args.tritons) as stack:
        for setting in args.runs:
            r = run_one(stack, args, setting, requests)
            real.append(r)
            print(
                f"prewarm {setting}: {r['triton_loads']} Triton loads, {r['cold_requests']} cold, "
                f"wait {r['wait_s']} s, pre-warms {r['prewarm_counters']}",
                file=sys.stderr,
            )
            save(result, args.json)
    # A cold request waits for more than the load alone (an eviction first, the first inference after): the
    # simulator's loads take what a cold request waited in the first run, so its wait-s compare with the client's.
    first = real[0]
    load_s = 1.4  # a quiet machine's load (docs NOTES), when nothing was cold
    if first["cold_s_median"]:
        load_s = round(first["cold_s_median"] - (first["warm_ms_median"] or 0.0) / 1000, 3)
    result["prediction"] = predict(requests, args, load_s)
    save(result, args.json)
    return result


def report(result: dict[str, Any]) -> str:
    s = result["setup"]
    kinds = list(s["functions"].values())
    lines = [
        f"pre-warming on real Tritons, commit {result['code']['commit']}, {result['machine']['cores']} cores, "
        f"load average {result['loadavg_before']} -> {result.get('loadavg_after')}",
        f"  Azure 2019 minutes {s['start_minute']}-{s['start_minute'] + s['minutes']} at "
        f"{s['seconds_per_minute']:g} s per minute: {s['requests']} requests over {len(kinds)} functions "
        f"({kinds.count(TIMER)} timers, {kinds.count(PERIODIC)} periodic, {kinds.count(IRREGULAR)} irregular), "
        f"{s['tritons']} Tritons x {s['slots_per_triton']} slots, eviction {s['eviction']}",
        "",
        "| run | Triton loads | cold requests | wait-s (client) | cold wait-s | median cold s | warm ms | "
        "pre-warms loaded / used / wasted / skipped | given up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["real"]:
        c = r["prewarm_counters"]
        lines.append(
            f"| real, --prewarm {r['prewarm']} | {r['triton_loads']} | {r['cold_requests']} | {r['wait_s']:.1f} "
            f"| {r['wait_s_cold']:.1f} | {r['cold_s_median']} | {r['warm_ms_median']} "
            f"| {c.get('loaded', 0)} / {c.get('used', 0)} / {c.get('wasted', 0)} / {c.get('skipped', 0)} "
            f"| {c.get('given_up', 0)} |"
        )
    pred = result.get("prediction")
    if pred:
        for p, v in pred.items():
            if p == "load_s":
                continue
            pw = (
                f"{v['prewarm_loads']:.0f} / {v['prewarm_used']:.0f} / - / -"
                if "prewarm_loads" in v
                else "- / - / - / -"
            )
            lines.append(
                f"| simulated, {p} | {v['misses'] + v.get('prewarm_loads', 0):.0f} | {v['waited']} | {v['wait_s']:.1f} "
                f"| | | | {pw} | {v.get('prewarm_given_up', '')} |"
            )
        lines.append("")
        lines.append(f"simulated: every load {pred['load_s']} s (the first run's median cold request, less warm)")
    for r in result["real"]:
        g = r["gap_check"]
        lines.append(
            f"learned gaps, --prewarm {r['prewarm']}: {g['learned']} models (the schedule gives {g['from_schedule']}); "
            f"{len(g['asked_once'])} for models asked for once, {len(g['under_half'])} under half the schedule's; "
            f"median learned load time {r['load_s_learned_median']} s"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    print(report(result_of(parse_args(argv), run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
