"""Shared parts of the benchmarks on the real stack (`loadtests.eviction_real`, `loadtests.prewarm_real`): a fresh
gateway over emptied Tritons, the loads and unloads Triton itself logged since a mark, the run's header, a
simulator trace of equal-sized models, and what the gateway learned and counted (its arrival gaps beside the
requests' own, its pre-warm counters)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from deploy.localstack.stack import GatewayProcess, LocalStack
from loadtests.harness import code_version, loadavg, machine_info
from loadtests.sim.engine import Result
from loadtests.sim.trace import GB, Trace
from placement.arrivals import update_gap


def add_stack_args(p: argparse.ArgumentParser, slots: int) -> None:
    """The arguments every real-stack benchmark takes: the Tritons, their capacity, where results and files go."""
    p.add_argument("--tritons", type=int, default=2, help="Triton servers")
    p.add_argument("--slots", type=int, default=slots, help="models each Triton may hold (capacity.models)")
    p.add_argument("--json", type=Path, help="write the whole result here")
    p.add_argument("--workdir", type=Path, help="keep the stack's files here (default: a temporary directory)")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the report of a saved run; run nothing")


def result_of(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict[str, Any]]) -> dict[str, Any]:
    """The saved run `--report` names, or a new one."""
    return dict(json.loads(args.report.read_text())) if args.report else run(args)


def unloads(stack: LocalStack) -> list[str]:
    """One line per model `finalize` on the Tritons (deploy/localstack/models.py)."""
    try:
        return [x for x in Path(f"{stack.load_log}.unload").read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class LogMarks:
    """How many lines Triton's load and unload logs had at one moment: what came after is one run's."""

    loads: int
    unloads: int

    @classmethod
    def now(cls, stack: LocalStack) -> LogMarks:
        return cls(len(stack.loads()), len(unloads(stack)))

    def new_loads(self, stack: LocalStack) -> list[str]:
        return stack.loads()[self.loads :]

    def new_unloads(self, stack: LocalStack) -> list[str]:
        return unloads(stack)[self.unloads :]


def fresh_gateway(
    stack: LocalStack, prefix: str, extra: Sequence[str], slots: int, models: Sequence[str]
) -> tuple[GatewayProcess, LogMarks]:
    """Stop the gateways, empty the Tritons, start one `modelyard serve` (with `extra` flags) under the fresh Redis
    key `prefix`, and register the backends (`capacity.models: slots` each) and `models`. The marks are taken after
    the Tritons were emptied and before the gateway could load anything."""
    stack.stop_gateways()
    stack.unload_everything()
    marks = LogMarks.now(stack)
    gw = stack.add_gateway(prefix=prefix, extra=list(extra))
    stack.register(slots, models)
    return gw, marks


def run_header(benchmark: str) -> dict[str, Any]:
    """What every saved run starts with: when, on what machine, from which commit, how busy the machine was."""
    return {
        "benchmark": benchmark,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "code": code_version(),
        "loadavg_before": loadavg(),
    }


def save(result: dict[str, Any], path: Path | None) -> None:
    """Write the result so far (after each run: a benchmark cut short keeps what it measured)."""
    result["loadavg_after"] = loadavg()
    if path is not None:
        path.write_text(json.dumps(result, indent=2) + "\n")


def equal_trace(label: str, requests: Sequence[tuple[float, str]], models: Sequence[str], cost: float) -> Trace:
    """`requests` (time, model) with equal sizes and one load time: the real Python-backend models are alike."""
    return Trace(label, sorted(requests), dict.fromkeys(models, GB), dict.fromkeys(models, cost))


def sim_summary(r: Result) -> dict[str, Any]:
    out = {"misses": r.misses, "evictions": r.evictions, "waited": r.waited, "wait_s": round(r.wait_seconds, 2)}
    out.update({k: v for k, v in r.extra.items() if k.startswith("prewarm_")})
    return out


def true_gaps(requests: Sequence[tuple[float, str]]) -> dict[str, float]:
    """Each model's mean gap as the gateway's rule (`placement.arrivals.update_gap`) would learn it from the
    scheduled request times alone: what the learned gaps should come close to."""
    gaps: dict[str, float] = {}
    last: dict[str, float] = {}
    for t, model in requests:
        gap = update_gap(gaps.get(model), last.get(model), t, 1)
        if gap is not None:
            gaps[model] = gap
        last[model] = t
    return gaps


def gap_check(requests: Sequence[tuple[float, str]], learned_gaps: dict[str, float]) -> dict[str, Any]:
    """How the learned gaps compare with the schedule's: learned for models asked for only once (impossible from
    arrivals), and learned at under half of the schedule's gap (a short observation pulled them down)."""
    want = true_gaps(requests)
    once = sorted(m for m in learned_gaps if m not in want)
    low = sorted(m for m, g in learned_gaps.items() if m in want and g < want[m] / 2)
    return {"learned": len(learned_gaps), "from_schedule": len(want), "asked_once": once, "under_half": low}


def learned(redis_url: str, prefix: str) -> dict[str, dict[str, float]]:
    """The load seconds and mean arrival gaps the gateway learned (its Redis hashes `loadsec`, `gaps`)."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {k: {m: round(float(v), 3) for m, v in r.hgetall(f"{prefix}:{k}").items()} for k in ("loadsec", "gaps")}
    finally:
        r.close()


PREWARM_METRIC = re.compile(r'^modelyard_prewarm_loads(?:_total)?\{result="(\w+)"\} (\S+)$', re.M)


def prewarm_counters(metrics_text: str) -> dict[str, int]:
    """`modelyard_prewarm_loads` by result (loaded, skipped, failed, used, wasted, given_up) from /metrics."""
    return {m.group(1): int(float(m.group(2))) for m in PREWARM_METRIC.finditer(metrics_text)}
