"""Request traces for the simulator: synthetic Zipf with shifting popularity and bursts, and the Azure Functions
2019 sample (functions as models, their app's memory as the model's size)."""

from __future__ import annotations

import csv
import gzip
import os
import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
# The trace is not in the repository: ../shared next to the checkout (or a worktree's parent's), or the variable.
AZURE_DIRS = [Path(p) for p in (os.environ.get("MODELYARD_AZURE_TRACE", ""),) if p] + [
    base / "shared" / "traces" / "azure-functions-2019" for base in (_REPO.parent, _REPO.parent.parent)
]


def azure_dir() -> Path | None:
    """Where the Azure trace is, or None when it is absent."""
    return next((d for d in AZURE_DIRS if (d / "invocations.csv.gz").exists()), None)


MB = 1 << 20
GB = 1 << 30  # the Azure README's 210 GiB total is in these units


@dataclass
class Trace:
    """Requests as (time in seconds, model), sorted by time; each model's size in bytes and load seconds."""

    name: str
    requests: list[tuple[float, str]]
    sizes: dict[str, int]
    costs: dict[str, float]
    uses: dict[str, list[float]] = field(default_factory=dict)  # each model's request times (for the oracles)

    def __post_init__(self) -> None:
        for t, m in self.requests:
            self.uses.setdefault(m, []).append(t)

    def next_use(self, model: str, now: float) -> float:
        """The first request for `model` after `now` (inf when none): what only an oracle knows."""
        times = self.uses.get(model, [])
        i = bisect_right(times, now)
        return times[i] if i < len(times) else float("inf")


def zipf_trace(
    alpha: float,
    *,
    models: int = 1000,
    requests: int = 100_000,
    rate: float = 50.0,
    shift_every: int = 10_000,
    shift_fraction: float = 0.1,
    burst_every: int = 5_000,
    burst_size: int = 30,
    sizes: Callable[[random.Random], int] | None = None,
    costs: Callable[[random.Random], float] | None = None,
    seed: int = 1,
) -> Trace:
    """Poisson arrivals at `rate`/s over Zipf(`alpha`) popularity. Every `shift_every` requests a `shift_fraction`
    of the ranks swap places (popularity drifts); every `burst_every` requests a random model gets `burst_size`
    requests within a few seconds. Equal sizes (1 GB) and 1 s loads unless `sizes`/`costs` draw them."""
    rng = random.Random(seed)
    names = [f"m{i:05d}" for i in range(models)]
    weights = [1.0 / (r + 1) ** alpha for r in range(models)]
    order = names[:]
    rng.shuffle(order)
    cum: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    out: list[tuple[float, str]] = []
    t = 0.0
    for i in range(requests):
        if i and i % shift_every == 0:
            picked = rng.sample(range(models), int(models * shift_fraction))
            moved = picked[:]
            rng.shuffle(moved)
            new = order[:]
            for a, b in zip(picked, moved, strict=True):
                new[a] = order[b]
            order = new
        if i and i % burst_every == 0:
            hot = rng.choice(names)
            out.extend((t + rng.uniform(0, 5.0), hot) for _ in range(burst_size))
        t += rng.expovariate(rate)
        out.append((t, order[bisect_right(cum, rng.random() * total)]))
    out.sort()
    size_of = {n: sizes(rng) if sizes else GB for n in names}
    cost_of = {n: costs(rng) if costs else 1.0 for n in names}
    kind = "sized" if sizes or costs else "equal"
    return Trace(f"zipf a={alpha} {kind} seed={seed}", out, size_of, cost_of)


def lognormal_sizes(rng: random.Random) -> int:
    """Model sizes: log-normal, median 200 MB, most between 50 MB and 1 GB."""
    return max(10 * MB, int(rng.lognormvariate(0.0, 0.8) * 200 * MB))


def uniform_costs(rng: random.Random) -> float:
    """Load seconds 1-3, independent of size (what a runtime's start-up adds)."""
    return rng.uniform(1.0, 3.0)


def azure_cost(memory_bytes: int) -> float:
    """The issue's load cost formula for the Azure trace: 0.2 s + 1 s per GiB."""
    return 0.2 + memory_bytes / GB


def azure_trace(directory: Path, *, seed: int = 1, minutes: int | None = None, even: bool = False) -> Trace:
    """The Azure Functions 2019 sample: each minute's count spread uniformly at random over its minute (`seed`),
    or evenly (`even`);
    a function's app memory as its size; load cost 0.2 s + 1 s/GiB. FileNotFoundError when it is absent."""
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    with open(directory / "functions.csv", newline="") as f:
        for row in csv.DictReader(f):
            sizes[row["function"]] = int(float(row["memory_mb"]) * MB)
    out: list[tuple[float, str]] = []
    with gzip.open(directory / "invocations.csv.gz", "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        last = len(header) if minutes is None else min(len(header), minutes + 1)
        for row in reader:
            name = row[0]
            for col in range(1, last):
                n = int(row[col]) if row[col] else 0
                base = (col - 1) * 60.0
                if even:  # as the issue's own simulation: n requests evenly spaced inside the minute
                    out.extend((base + (k + 0.5) * 60.0 / n, name) for k in range(n))
                else:
                    out.extend((base + rng.random() * 60.0, name) for _ in range(n))
    out.sort()
    used = {m for _, m in out}
    sizes = {m: s for m, s in sizes.items() if m in used}
    label = f"azure-functions-2019 {'even' if even else f'seed={seed}'}" + (f" first {minutes} min" if minutes else "")
    return Trace(label, out, sizes, {m: azure_cost(s) for m, s in sizes.items()})
