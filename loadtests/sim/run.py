"""Run the simulator: `python -m loadtests.sim.run zipf|sized|azure [...]` prints one table per scenario.

Every policy of a scenario runs over the same trace in the same run, beside plain LRU and the oracles.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from loadtests.sim.engine import Backend, Result, Simulation
from loadtests.sim.oracles import Belady, BeladySize
from loadtests.sim.trace import GB, Trace, azure_dir, azure_trace, lognormal_sizes, uniform_costs, zipf_trace
from placement.clock import FakeClock
from placement.eviction import EVICTIONS, EvictionPolicy, GreedyDualSizeFrequency, PredictedNextUse
from placement.policy import MostFreeFirst
from placement.prewarm import Prewarmer

PolicyFactory = Callable[[Trace, FakeClock], EvictionPolicy]

POLICIES: dict[str, PolicyFactory] = {
    "lru": lambda trace, clock: EVICTIONS["lru"](clock),
    "gdsf": lambda trace, clock: EVICTIONS["gdsf"](clock),
    "nextuse": lambda trace, clock: EVICTIONS["nextuse"](clock),
    "nextuse-nosize": lambda trace, clock: PredictedNextUse(clock, use_size=False),
    "gdsf-nosize": lambda trace, clock: GreedyDualSizeFrequency(clock, use_size=False),
    "gdsf-log": lambda trace, clock: GreedyDualSizeFrequency(clock, log_frequency=True),
    "belady": Belady,
    "belady-size": BeladySize,
}


def simulate(trace: Trace, backends: list[Backend], policy: str) -> Result:
    """Run one policy over the trace; `NAME+prewarm` runs policy NAME with pre-warming on."""
    clock = FakeClock(0.0)
    name, _, extra = policy.partition("+")
    prewarmer = Prewarmer() if extra == "prewarm" else None
    result = Simulation(trace, backends, MostFreeFirst(), POLICIES[name](trace, clock), clock, prewarmer).run()
    result.policy = policy
    return result


def split(n_backends: int, models: int | None = None, memory_bytes: int | None = None) -> list[Backend]:
    """`n_backends` equal backends sharing a total model count or byte capacity."""
    return [
        Backend(
            f"b{i}",
            models // n_backends if models else 1_000_000,
            memory_bytes // n_backends if memory_bytes else None,
        )
        for i in range(n_backends)
    ]


def table(title: str, results: list[Result], base: str = "lru") -> str:
    ref = next((r for r in results if r.policy == base), results[0])
    rows = [
        f"### {title}",
        "",
        "| policy | misses | miss ratio | x Belady misses | load-s | vs LRU load-s | gap closed | GiB loaded | waited "
        "| wait-s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    bel = next((r for r in results if r.policy == "belady"), None)
    oracles = [r.load_seconds for r in results if r.policy.startswith("belady")]
    best = min(oracles) if oracles else None
    for r in results:
        rows.append(
            f"| {r.policy} | {r.misses:,} | {r.miss_ratio:.4f} | "
            f"{r.misses / bel.misses if bel and bel.misses else float('nan'):.2f} | {r.load_seconds:,.0f} | "
            f"{(r.load_seconds / ref.load_seconds - 1) * 100 if ref.load_seconds else 0:+.1f}% | "
            f"{_closed(ref.load_seconds, r.load_seconds, best)} | "
            f"{r.bytes_loaded / GB:,.1f} | {r.waited:,} | {r.wait_seconds:,.0f} |"
        )
    return "\n".join(rows)


def _closed(lru: float, policy: float, oracle: float | None) -> str:
    """The share of the load-seconds gap between LRU and the better oracle that `policy` closes."""
    if oracle is None or lru <= oracle:
        return "-"
    return f"{(lru - policy) / (lru - oracle):.0%}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.sim.run", description=__doc__)
    ap.add_argument("scenario", choices=["zipf", "sized", "azure"])
    ap.add_argument("--policies", default="lru,gdsf,nextuse,belady,belady-size")
    ap.add_argument("--alphas", default="0.8,1.0,1.2")
    ap.add_argument("--capacities", default=None, help="share of models (zipf) or bytes (sized, azure), e.g. 0.1")
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=None, help="azure: only the first N minutes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--even", action="store_true", help="azure: spread each minute's requests evenly, not at random")
    args = ap.parse_args(argv)
    policies = args.policies.split(",")
    caps = [float(c) for c in (args.capacities or ("0.1" if args.scenario != "azure" else "0.05,0.1,0.2")).split(",")]
    scenarios: list[tuple[str, Trace, list[Backend]]] = []
    if args.scenario == "azure":
        where = azure_dir()
        if where is None:
            print(
                "azure: the trace is absent (../shared/traces/azure-functions-2019 or $MODELYARD_AZURE_TRACE); skipped"
            )
            return 0
        trace = azure_trace(where, seed=args.seed, minutes=args.minutes, even=args.even)
        total = sum(trace.sizes.values())
        for cap in caps:
            scenarios.append((f"{trace.name}, {cap:.0%} of bytes", trace, split(args.backends, None, int(total * cap))))
    else:
        for alpha in (float(a) for a in args.alphas.split(",")):
            sized = args.scenario == "sized"
            trace = zipf_trace(
                alpha,
                models=args.models,
                requests=args.requests,
                seed=args.seed,
                sizes=lognormal_sizes if sized else None,
                costs=uniform_costs if sized else None,
            )
            total = sum(trace.sizes.values())
            for cap in caps:
                backends = (
                    split(args.backends, None, int(total * cap))
                    if sized
                    else split(args.backends, int(args.models * cap))
                )
                unit = "bytes" if sized else "models"
                scenarios.append((f"{trace.name}, {cap:.0%} of {unit}", trace, backends))
    for title, trace, backends in scenarios:
        results = []
        for p in policies:
            started = time.perf_counter()
            results.append(simulate(trace, backends, p))
            results[-1].extra["seconds"] = time.perf_counter() - started
        print(table(f"{title}, {len(backends)} backends, {len(trace.requests):,} requests", results))
        for r in results:
            if "prewarm_loads" in r.extra:
                print(
                    f"- {r.policy}: {r.extra['prewarm_loads']:,.0f} pre-warm loads, "
                    f"{r.extra['prewarm_used']:,.0f} used before eviction, "
                    f"{r.extra['prewarm_given_up']:,.0f} give-ups, {r.extra['prewarm_retried']:,.0f} retries after a "
                    "pause; load-s include them"
                )
        print()
        print("run time: " + ", ".join(f"{r.policy} {r.extra['seconds']:.1f} s" for r in results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
