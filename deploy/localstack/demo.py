"""`make demo`: far more models than fit in memory, served through one URL, with the hot ones staying warm.

Starts a real Redis, two real Triton servers and one `modelyard serve` gateway (`LocalStack`), registers the
backends (K model slots each) and N models (N much larger than the slots) through the admin API, then drives a
Zipf-skewed workload through the gateway's one URL: R requests per second on a schedule (open loop, as from
many independent clients; at most C in flight). Every answer is checked (status,
`OUTPUT0 == input + the model's offset`, `MODEL_NAME`). A live view shows throughput, the hit ratio, loads and
evictions (from the gateway's `/metrics`), latencies and what each backend holds (from `/admin/placement`); the
summary splits latency into warm and cold requests and checks, from the Triton servers' own repository index
sampled during the run, that no backend ever held more models than its capacity.

    python -m deploy.localstack.demo [--duration 60] [--exit] [--models 120] [--capacity 8] [--rate 4]
                                     [--concurrency 48] [--zipf 1.4] [--seed 1] [--workdir .localstack/demo]

Exit code 0 when every answer was right, 1 otherwise; 128 + the signal number when Ctrl-C or SIGTERM came
before the summary. Whatever happens, everything the demo started is stopped before it exits.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import queue
import random
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from deploy.localstack.models import demo_model_names, model_offset, write_model_repository
from deploy.localstack.stack import GatewayProcess, LocalStack

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORKDIR = REPO_ROOT / ".localstack" / "demo"
# A workdir holding this file was made by the demo and may be wiped; any other non-empty directory is refused.
MARKER = ".modelyard-demo"
REQUEST_TIMEOUT_S = 30.0
HOLDING_INTERVAL_S = 0.2
TICK_S = 1.0


# -- options ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration: float
    exit: bool
    models: int
    capacity: int
    concurrency: int
    rate: float
    zipf: float
    seed: int
    workdir: Path


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m deploy.localstack.demo",
        description=(
            "Start Redis, two Triton servers and one modelyard gateway on 127.0.0.1, register far more models "
            "than the Tritons have room for, and send Zipf-skewed traffic through the gateway's one URL."
        ),
        epilog="From the repository root: make demo ARGS='--duration 20 --exit'",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--exit", action="store_true", help="stop everything after the summary (default: keep serving)")
    p.add_argument("--models", type=int, default=120, help="models to register, at least 100 (default 120)")
    p.add_argument("--capacity", type=int, default=8, help="model slots per Triton server (default 8)")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second, sent on a schedule (default 4)")
    p.add_argument(
        "--concurrency", type=int, default=48, help="most requests in flight at once (default 48); more wait their turn"
    )
    p.add_argument("--zipf", type=float, default=1.4, help="Zipf exponent s: P(rank r) ~ 1/r^s (default 1.4)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the workload (default 1)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="logs, model repository and load log; wiped at start (default .localstack/demo)",
    )
    a = p.parse_args(argv)
    if a.duration <= 0:
        p.error("--duration must be positive")
    if a.models < 100:
        p.error("--models must be at least 100: the point is far more models than slots")
    if a.capacity < 1:
        p.error("--capacity must be at least 1")
    if a.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if a.rate <= 0:
        p.error("--rate must be positive")
    if a.zipf < 0:
        p.error("--zipf must not be negative")
    return Options(
        duration=a.duration,
        exit=a.exit,
        models=a.models,
        capacity=a.capacity,
        concurrency=a.concurrency,
        rate=a.rate,
        zipf=a.zipf,
        seed=a.seed,
        workdir=a.workdir.expanduser().resolve(),
    )


# -- output -------------------------------------------------------------------------------------------------


class Console:
    """Steps on one line each; in place updates (`\\r`, cursor up) only when the stream is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._live_lines = 0

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    @contextmanager
    def step(self, text: str) -> Iterator[Step]:
        step = Step(self, text)
        step.begin()
        try:
            yield step
        except BaseException:
            step.end("failed")
            raise
        step.end("done")

    def fit(self, text: str) -> str:
        """Cut a line that is redrawn in place to the terminal's width: a wrapped line can't be redrawn."""
        width = shutil.get_terminal_size((120, 24)).columns - 1
        return text if len(text) <= width else text[: max(0, width - 3)] + "..."

    def live(self, lines: Sequence[str]) -> None:
        """Redraw the block of lines drawn last time, in place (terminals only)."""
        out = f"\x1b[{self._live_lines}F" if self._live_lines else ""
        out += "".join(f"\x1b[2K{self.fit(s)}\n" for s in lines)
        self.stream.write(out)
        self.stream.flush()
        self._live_lines = len(lines)

    def end_live(self) -> None:
        self._live_lines = 0


class Step:
    def __init__(self, console: Console, text: str) -> None:
        self.console = console
        self.text = text
        self.detail = ""
        self.started = time.monotonic()

    def begin(self) -> None:
        self.console.stream.write(f"{self.text} ...")
        self.console.stream.flush()

    def update(self, detail: str) -> None:
        """Progress of a long step: redrawn in place on a terminal, shown once at the end otherwise."""
        self.detail = detail
        if self.console.tty:
            self.console.stream.write("\r\x1b[2K" + self.console.fit(f"{self.text} ... {detail}"))
            self.console.stream.flush()

    def end(self, outcome: str) -> None:
        took = time.monotonic() - self.started
        detail = f" {self.detail}" if self.detail else ""
        if self.console.tty:
            self.console.stream.write(f"\r\x1b[2K{self.text} ...{detail} {outcome} ({took:.1f} s)\n")
        else:
            self.console.stream.write(f"{detail} {outcome} ({took:.1f} s)\n")
        self.console.stream.flush()


def fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def ratio(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


# -- workload -----------------------------------------------------------------------------------------------


class ZipfPicker:
    """Rank r (1-based) is chosen with probability proportional to 1/r^s, over a seeded permutation of names."""

    def __init__(self, names: Sequence[str], s: float, seed: int) -> None:
        self.ranked = list(names)
        random.Random(seed).shuffle(self.ranked)
        self.weights: list[float] = [1.0 / float(r) ** s for r in range(1, len(self.ranked) + 1)]
        self.cum = list(itertools.accumulate(self.weights))

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.ranked, cum_weights=self.cum)[0]

    def share(self, top: int) -> float:
        """Expected fraction of requests that go to the `top` hottest models."""
        return self.cum[min(top, len(self.cum)) - 1] / self.cum[-1]


@dataclass(frozen=True)
class Result:
    done: float  # time.monotonic() when the answer (or the failure) came
    latency: float
    model: str
    cold: bool  # the gateway said this request waited for a load (x-modelyard-cold: 1)
    answered: bool  # an HTTP response came (right or wrong); False for timeouts and connection errors
    backend: str = ""  # x-modelyard-backend
    error_kind: str | None = None
    error: str | None = None


class Results:
    """What the workers saw, appended from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Result] = []

    def add(self, r: Result) -> None:
        with self._lock:
            self._items.append(r)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self._items)


def check_answer(
    response: httpx.Response, name: str, data: Sequence[float], offsets: dict[str, float]
) -> tuple[str, str] | None:
    """None when the answer is right, else (kind of error, what was wrong)."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}", f"{name}: HTTP {response.status_code}: {response.text[:300]}"
    try:
        body = response.json()
        outputs = {o["name"]: o for o in body["outputs"]}
        got = [float(v) for v in outputs["OUTPUT0"]["data"]]
        got_name = list(outputs["MODEL_NAME"]["data"])
    except (ValueError, KeyError, TypeError) as exc:
        return "malformed answer", f"{name}: not the expected KServe v2 answer ({exc!r}): {response.text[:300]}"
    offset = offsets[name]
    expected = [x + offset for x in data]
    if len(got) != len(expected) or any(
        abs(g - e) > 1e-3 * max(1.0, abs(e)) for g, e in zip(got, expected, strict=True)
    ):
        hint = ""
        if len(got) == len(expected):
            by_offset = {v: k for k, v in offsets.items()}
            other = by_offset.get(float(round(got[0] - data[0])))
            if other is not None and other != name:
                hint = f" (that is {other}'s answer)"
        return "wrong OUTPUT0", f"{name}: OUTPUT0 {got}, expected input + {offset:g} = {expected}{hint}"
    if got_name != [name]:
        return "wrong MODEL_NAME", f"{name}: MODEL_NAME {got_name}, expected [{name!r}]"
    return None


class Arrivals(threading.Thread):
    """Open-loop traffic, as from many independent clients: a request is due every 1/rate seconds (Poisson
    gaps), whether or not earlier ones were answered. A request waiting for a cold load holds up nobody else."""

    def __init__(self, rate: float, picker: ZipfPicker, seed: int) -> None:
        super().__init__(name="arrivals", daemon=True)
        self.rate = rate
        self.picker = picker
        self.rng = random.Random(f"{seed}-arrivals")  # one generator: the same seed gives the same requests
        self.due: queue.Queue[tuple[float, str]] = queue.Queue()
        self.stop_event = threading.Event()

    def run(self) -> None:
        t = time.monotonic()
        while not self.stop_event.is_set():
            t += self.rng.expovariate(self.rate)
            delay = t - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            self.due.put((t, self.picker.pick(self.rng)))


class Worker(threading.Thread):
    """One client connection: takes the next due request, sends it, checks the answer, until told to stop.
    Latency counts from when the request was due, so time spent waiting for a free worker is not hidden."""

    def __init__(
        self,
        index: int,
        url: str,
        picker: ZipfPicker,
        offsets: dict[str, float],
        seed: int,
        out: Results,
        due: queue.Queue[tuple[float, str]],
    ) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.url = url
        self.picker = picker
        self.offsets = offsets
        self.rng = random.Random(f"{seed}-worker-{index}")
        self.out = out
        self.due = due
        self.stop_event = threading.Event()
        self.current: str | None = None  # the model of the request in flight, for the live view

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stop_event.is_set():
                try:
                    scheduled, name = self.due.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.out.add(self.one(client, scheduled, name))
        self.current = None

    def one(self, client: httpx.Client, scheduled: float, name: str) -> Result:
        data = [round(self.rng.uniform(-10.0, 10.0), 2) for _ in range(4)]
        payload = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": data}]}
        cold, answered, backend = False, False, ""
        failure: tuple[str, str] | None
        self.current = name
        started = scheduled
        try:
            response = client.post(f"/v2/models/{name}/infer", json=payload)
            answered = True
            cold = response.headers.get("x-modelyard-cold") == "1"
            backend = response.headers.get("x-modelyard-backend", "")
            failure = check_answer(response, name, data, self.offsets)
        except httpx.TimeoutException:
            failure = "timeout", f"{name}: no answer within {REQUEST_TIMEOUT_S:g} s"
        except httpx.HTTPError as exc:
            failure = "request failed", f"{name}: {type(exc).__name__}: {exc}"
        done = time.monotonic()
        kind, detail = failure if failure else (None, None)
        return Result(done, done - started, name, cold, answered, backend, kind, detail)


class HoldingSampler(threading.Thread):
    """Reads every Triton's repository index about every 0.2 s and keeps the most models each held at once."""

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(name="holding-sampler", daemon=True)
        self.stack = stack
        self.stop_event = threading.Event()
        self.max_held = [0] * len(stack.tritons)
        self.samples = 0
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            for i, triton in enumerate(self.stack.tritons):
                try:
                    held = len(self.stack.holding(triton))
                except (httpx.HTTPError, ValueError):
                    self.failures += 1
                    continue
                self.max_held[i] = max(self.max_held[i], held)
                self.samples += 1
            self.stop_event.wait(HOLDING_INTERVAL_S)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)


# -- what the gateway says ------------------------------------------------------------------------------------


@dataclass
class GatewayState:
    loads: float | None = None
    evictions: float | None = None
    # backend id -> (models holding a slot, capacity in models, names of ready models)
    backends: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed by name with labels, as written."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples


def metric_total(samples: dict[str, float], name: str, *labels: str) -> float:
    """The sum of `name`'s samples over every label set that has all of `labels` (`key="value"`)."""
    return sum(
        v
        for key, v in samples.items()
        if (key == name or key.startswith(name + "{")) and all(label in key for label in labels)
    )


def read_gateway(admin: httpx.Client) -> GatewayState:
    state = GatewayState()
    try:
        metrics = parse_metrics(admin.get("/metrics").text)
        state.loads = metric_total(metrics, "modelyard_loads_total", 'result="ok"')
        state.evictions = metric_total(metrics, "modelyard_evictions_total")
    except httpx.HTTPError:
        pass
    try:
        r = admin.get("/admin/placement")
        r.raise_for_status()
        backends: dict[str, Any] = r.json()["backends"]
        for bid, b in sorted(backends.items()):
            ready = [m["name"] for m in b["models"] if m["state"] == "ready"]
            state.backends[bid] = (int(b["used"]["models"]), int(b["capacity"]["models"]), ready)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return state


def fmt_count(value: float | None) -> str:
    return "?" if value is None else str(int(value))


# -- the demo -----------------------------------------------------------------------------------------------


class Demo:
    def __init__(self, opts: Options, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.names = demo_model_names(opts.models)
        self.offsets = {name: model_offset(self.names, name) for name in self.names}
        self.picker = ZipfPicker(self.names, opts.zipf, opts.seed)
        self.token = secrets.token_urlsafe(16)
        self.stack: LocalStack | None = None
        self.gateway: GatewayProcess | None = None
        self.admin: httpx.Client | None = None
        self.results = Results()
        self.workers: list[Worker] = []
        self.arrivals: Arrivals | None = None
        self.sampler: HoldingSampler | None = None
        self.traffic_started: float | None = None
        self.traffic_stopped: float | None = None  # when the workers were told to stop
        self.traffic_ended: float | None = None  # when the last answer came
        self.interrupted = False

    @property
    def slots(self) -> int:
        return self.opts.capacity * len(self.stack.tritons if self.stack else [])

    # -- setup --

    def prepare_workdir(self) -> None:
        wd = self.opts.workdir
        if wd.exists():
            if not wd.is_dir():
                raise SystemExit(f"--workdir {wd} exists and is not a directory")
            if any(wd.iterdir()) and not (wd / MARKER).exists():
                raise SystemExit(
                    f"--workdir {wd} is not empty and was not made by the demo: refusing to wipe it; "
                    "pick an empty or new directory"
                )
            shutil.rmtree(wd)
        wd.mkdir(parents=True)
        (wd / MARKER).write_text("made by `python -m deploy.localstack.demo`; wiped at every run\n")

    def setup(self) -> None:
        o, c = self.opts, self.console
        self.prepare_workdir()
        c.line(
            f"modelyard demo: {o.models} models behind one gateway URL, on 2 Triton servers with room for "
            f"{o.capacity} models each ({2 * o.capacity} slots)."
        )
        c.line(
            "A request for a model that is not loaded waits while the gateway evicts the least recently used model "
            "and Triton loads the one asked for (seconds: each model is a real Python-backend process); a request "
            f"for a loaded model takes milliseconds. Traffic is Zipf-skewed (s={o.zipf:g}): a few hot models get "
            "most requests and should stay loaded."
        )
        c.line(f"Logs and the generated model repository: {o.workdir}")
        c.line()
        stack = self.stack = LocalStack(o.workdir, self.names, tritons=2, token=self.token)
        with c.step(f"[1/6] writing {o.models} Python-backend models to {stack.repo}"):
            write_model_repository(stack.repo, self.names, load_log=stack.load_log)
        with c.step("[2/6] starting Redis") as s:
            stack.redis.start()
            s.update(stack.redis.url)
        with c.step("[3/6] starting 2 Triton servers") as s:
            started: list[str] = []
            for i, t in enumerate(stack.tritons):
                t.start()
                started.append(f"triton-{i} {t.url}")
                s.update(", ".join(started))
        with c.step("[4/6] starting the gateway (modelyard serve)") as s:
            # Listed in the stack before it starts, so that stopping the stack stops it whatever happens.
            gw = self.gateway = GatewayProcess(stack.redis.url, o.workdir, token=self.token)
            stack.gateways.append(gw)
            gw.start()
            s.update(gw.url)
        self.admin = httpx.Client(
            base_url=gw.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=httpx.Timeout(30.0)
        )
        with c.step(f"[5/6] registering 2 backends ({o.capacity} slots each) and {o.models} models (admin API)") as s:
            for i, t in enumerate(stack.tritons):
                r = self.admin.put(
                    f"/admin/backends/triton-{i}",
                    json={"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": o.capacity}},
                )
                _raise_for(r, f"PUT /admin/backends/triton-{i}")
            for n, name in enumerate(self.names, 1):
                r = self.admin.put(f"/admin/models/{name}", json={"runtime": "triton"})
                _raise_for(r, f"PUT /admin/models/{name}")
                if n % 10 == 0 or n == len(self.names):
                    s.update(f"{n}/{len(self.names)} models")

    # -- traffic --

    def tiers(self) -> list[tuple[str, list[str]]]:
        """Models by popularity: the hottest quarter of the slots' worth, the rest of the slots' worth, the tail."""
        ranked, slots = self.picker.ranked, self.slots
        hottest = max(1, slots // 4)
        return [
            (f"ranks 1-{hottest}", ranked[:hottest]),
            (f"ranks {hottest + 1}-{slots}", ranked[hottest:slots]),
            (f"ranks {slots + 1}-{len(ranked)}", ranked[slots:]),
        ]

    def run_traffic(self) -> None:
        o, c = self.opts, self.console
        assert self.stack is not None and self.gateway is not None
        hottest = self.tiers()[0][1]
        c.line(
            f"[6/6] sending traffic for {o.duration:g} s: {o.rate:g} requests/s on a schedule (up to "
            f"{o.concurrency} in flight) "
            f"to POST {self.gateway.url}/v2/models/<name>/infer"
        )
        c.line(
            f"      the {len(hottest)} hottest models get {100 * self.picker.share(len(hottest)):.0f}% of requests, "
            f"the {self.slots} hottest {100 * self.picker.share(self.slots):.0f}%; the other "
            f"{o.models - self.slots} share the rest"
        )
        self.sampler = HoldingSampler(self.stack)
        self.sampler.start()
        self.traffic_started = time.monotonic()
        self.arrivals = Arrivals(o.rate, self.picker, o.seed)
        self.arrivals.start()
        for i in range(o.concurrency):
            w = Worker(i, self.gateway.url, self.picker, self.offsets, o.seed, self.results, self.arrivals.due)
            w.start()
            self.workers.append(w)
        deadline = self.traffic_started + o.duration
        seen = 0
        next_tick = self.traffic_started + TICK_S
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(max(0.0, min(next_tick, deadline) - now))
            window_start = next_tick - TICK_S
            next_tick += TICK_S
            seen = self.show_live(seen, window_start)
        c.end_live()
        with c.step(f"time is up: waiting for the last answers (up to {o.concurrency} requests in flight)"):
            self.finish_traffic()

    def finish_traffic(self) -> None:
        """Stop the arrivals and the workers (each finishes its request in flight) and the sampler."""
        if self.arrivals is not None:
            self.arrivals.stop_event.set()
        for w in self.workers:
            w.stop_event.set()
        if self.traffic_stopped is None:
            self.traffic_stopped = time.monotonic()
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 5
        for w in self.workers:
            w.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.traffic_started is not None and self.traffic_ended is None:
            self.traffic_ended = time.monotonic()
        if self.sampler is not None:
            self.sampler.finish()
        self.write_requests_log()

    def write_requests_log(self) -> None:
        """Every request of the run, one CSV row each, for a closer look (`requests.csv` in the workdir)."""
        start = self.traffic_started or 0.0
        rank = {name: i + 1 for i, name in enumerate(self.picker.ranked)}
        with open(self.opts.workdir / "requests.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["done_s", "model", "zipf_rank", "latency_ms", "cold", "backend", "error"])
            for r in self.results.snapshot():
                row = [f"{r.done - start:.3f}", r.model, rank[r.model], f"{r.latency * 1000:.1f}", int(r.cold)]
                w.writerow([*row, r.backend, r.error or ""])

    def show_live(self, seen: int, window_start: float) -> int:
        assert self.admin is not None and self.traffic_started is not None
        results = self.results.snapshot()
        now = time.monotonic()
        window = results[seen:]
        all_lat = sorted(r.latency for r in results)
        win_lat = sorted(r.latency for r in window)
        answered = sum(1 for r in results if r.answered)
        warm = sum(1 for r in results if r.answered and not r.cold)
        errors = sum(1 for r in results if r.error_kind)
        gw = read_gateway(self.admin)
        ready = {name for _, _, names in gw.backends.values() for name in names}
        waiting = sum(1 for w in self.workers if w.current is not None and w.current not in ready)
        backends = "  ".join(
            f"{bid} {used}/{cap}" + (f" ({used - len(names)} loading or unloading)" if used > len(names) else "")
            for bid, (used, cap, names) in gw.backends.items()
        )
        (hot_label, hot), (next_label, nxt), _ = self.tiers()
        resident = (
            f"loaded: {sum(1 for n in hot if n in ready)}/{len(hot)} of the hottest ({hot_label}), "
            f"{sum(1 for n in nxt if n in ready)}/{len(nxt)} of {next_label}"
        )
        first = (
            f"{now - self.traffic_started:4.0f} s  {len(window) / max(now - window_start, 1e-6):5.1f} req/s  "
            f"hit ratio {ratio(warm, answered)}  loads {fmt_count(gw.loads)}  "
            f"evictions {fmt_count(gw.evictions)}  errors {errors}"
        )
        latency = (
            f"latency p50/p99: last 1 s {fmt_latency(percentile(win_lat, 0.5))} / "
            f"{fmt_latency(percentile(win_lat, 0.99))}, overall {fmt_latency(percentile(all_lat, 0.5))} / "
            f"{fmt_latency(percentile(all_lat, 0.99))}"
        )
        backlog = self.arrivals.due.qsize() if self.arrivals is not None else 0
        workers = f"requests waiting for a load: {waiting}" + (f", queued for a worker: {backlog}" if backlog else "")
        if self.console.tty:
            self.console.live(
                [f"  {first}", f"        {latency}", f"        {backends or '?'}", f"        {resident}; {workers}"]
            )
        else:
            self.console.line(f"  {first}  {latency}  {backends or '?'}  {resident}  {workers}")
        return len(results)

    # -- summary --

    def summary(self) -> list[str]:
        o = self.opts
        assert self.stack is not None and self.admin is not None
        results = self.results.snapshot()
        now = time.monotonic()
        started = self.traffic_started or now
        took = (self.traffic_ended or now) - started
        sent_for = (self.traffic_stopped or now) - started
        interrupted = " (interrupted)" if self.interrupted else ""
        total = len(results)
        errors = [r for r in results if r.error_kind]
        # Warm and cold are what the gateway said about the answers; requests without an answer are neither.
        warm = [r for r in results if r.answered and not r.cold]
        cold = [r for r in results if r.answered and r.cold]
        gw = read_gateway(self.admin)
        real_loads = len(self.stack.loads())
        served = {r.model for r in results if not r.error_kind}

        def lat_line(rs: list[Result]) -> str:
            lat = sorted(r.latency for r in rs)
            return "  ".join(f"p{int(q * 100)} {fmt_latency(percentile(lat, q)):>9}" for q in (0.5, 0.9, 0.99))

        lines = [
            f"== summary{interrupted}: {sent_for:.0f} s of traffic (+{took - sent_for:.1f} s for the last answers), "
            f"{o.models} models on 2 Triton servers x {o.capacity} slots, "
            f"{o.rate:g} req/s scheduled, Zipf s={o.zipf:g}",
            f"  requests      {total} ({total / max(took, 1e-6):.1f}/s), every answer checked "
            "(HTTP 200, OUTPUT0 = input + model offset, MODEL_NAME)",
            f"  errors        {len(errors)}",
        ]
        kinds = Counter(r.error_kind for r in errors)
        for kind, n in kinds.most_common():
            example = next(r.error for r in errors if r.error_kind == kind)
            lines.append(f"                {n} x {kind}, e.g. {example}")
        lines.append(
            f"  hit ratio     {ratio(len(warm), len(warm) + len(cold))} ({len(warm)} warm, {len(cold)} cold: waited "
            "for a load)"
        )
        for i, (label, names) in enumerate(self.tiers()):
            members = set(names)
            rs = [r for r in results if r.model in members]
            lines.append(
                f"  {'by rank' if i == 0 else '':14}{label + ':':14} {ratio(len(rs), total):>6} of requests, "
                f"{ratio(sum(1 for r in rs if r.answered and not r.cold), sum(1 for r in rs if r.answered)):>6} warm"
            )
        lines += [
            f"  loads         {fmt_count(gw.loads)} (gateway /metrics); {real_loads} real loads on Triton "
            "(the models' load log)",
            f"  evictions     {fmt_count(gw.evictions)} (gateway /metrics)",
            f"  latency warm  {lat_line(warm)}",
            f"  latency cold  {lat_line(cold)}",
            f"  models        served {len(served)} distinct models with {self.slots} slots ({o.models} registered)",
        ]
        sampler = self.sampler
        if sampler is not None and sampler.samples:
            held = ", ".join(f"triton-{i} {n}/{o.capacity}" for i, n in enumerate(sampler.max_held))
            verdict = "EXCEEDED" if any(n > o.capacity for n in sampler.max_held) else "never exceeded"
            failed = f", {sampler.failures} failed" if sampler.failures else ""
            lines.append(
                f"  capacity      max held at once: {held} ({verdict}; {sampler.samples} reads of the Tritons' "
                f"own repository index{failed})"
            )
        else:
            lines.append("  capacity      max held at once: not sampled")
        warm_p50, cold_p50 = (percentile(sorted(r.latency for r in rs), 0.5) for rs in (warm, cold))
        warm_p99 = percentile(sorted(r.latency for r in warm), 0.99)  # loads next door must not reach it
        if errors:
            lines.append(f"  result        FAILED: {len(errors)} wrong or failed answers (see errors above)")
        else:
            lines.append(
                f"  result        OK: {len(served)} models answered through one URL with {self.slots} slots, "
                f"no answer wrong; median warm {fmt_latency(warm_p50)} (p99 {fmt_latency(warm_p99)}), "
                f"cold {fmt_latency(cold_p50)}"
            )
        lines.append(f"  every request is in {self.opts.workdir / 'requests.csv'}, the logs next to it")
        return lines

    # -- serving --

    def serve_forever(self) -> None:
        assert self.gateway is not None and self.admin is not None
        url, token = self.gateway.url, self.token
        # Examples that are true right now: the most popular model that is loaded, the least popular that is not.
        gw = read_gateway(self.admin)
        ready = {name for _, _, names in gw.backends.values() for name in names}
        hot = next((n for n in self.picker.ranked if n in ready), self.picker.ranked[0])
        cold = next((n for n in reversed(self.picker.ranked) if n not in ready), self.picker.ranked[-1])
        body = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[4],"data":[1,2,3,4]}]}'
        port = self.gateway.http_port
        py = Path(sys.executable)
        try:
            py = py.relative_to(Path.cwd())
        except ValueError:
            pass
        lines = [
            "",
            "The stack keeps serving until Ctrl-C.",
            f"  gateway      {url}  (KServe v2 HTTP; gRPC on 127.0.0.1:{self.gateway.grpc_port})",
            f"  admin token  {token}",
            f"  live page    {url}/ui?token={token}",
            f"  metrics      {url}/metrics",
            "",
            f"Try a loaded model ({hot}: answers in milliseconds) and one that is not loaded ({cold}: the first call "
            "waits for a load and carries x-modelyard-cold: 1; call it again and it is warm):",
            f"  curl -si --compressed {url}/v2/models/{hot}/infer -H 'content-type: application/json' -d '{body}'",
            f"  curl -si --compressed {url}/v2/models/{cold}/infer -H 'content-type: application/json' -d '{body}'",
            f"  curl -s -H 'Authorization: Bearer {token}' {url}/admin/placement",
            f"  curl -s -H 'Authorization: Bearer {token}' {url}/admin/models/{cold}",
            "With tritonclient (the stock Triton client, pointed at the gateway):",
            f'  {py} -c "import numpy as np, tritonclient.http as th; '
            f"c = th.InferenceServerClient('127.0.0.1:{port}'); i = th.InferInput('INPUT0', [4], 'FP32'); "
            f"i.set_data_from_numpy(np.arange(4, dtype=np.float32)); "
            f"print(c.infer('{cold}', [i]).as_numpy('OUTPUT0'))\"",
            "",
        ]
        for line in lines:
            self.console.line(line)
        while True:
            time.sleep(3600)

    # -- teardown --

    def shutdown(self) -> None:
        for w in self.workers:
            w.stop_event.set()
        if self.sampler is not None:
            self.sampler.stop_event.set()
        if self.admin is not None:
            self.admin.close()
        if self.stack is None:
            return
        with self.console.step("stopping the gateway, the Triton servers and Redis"):
            self.stack.stop()


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise RuntimeError(f"{what} answered {response.status_code}: {response.text[:500]}")


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT (Ctrl-C) and SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.signame = signal.Signals(signum).name


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _still_stopping(_signum: int, _frame: FrameType | None) -> None:
    sys.stderr.write("\nstill stopping what the demo started, please wait...\n")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    console = Console(sys.stdout)
    demo = Demo(opts, console)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    summarized = False
    try:
        demo.setup()
        demo.run_traffic()
        console.line()
        for line in demo.summary():
            console.line(line)
        summarized = True
        errors = any(r.error_kind for r in demo.results.snapshot())
        code = 1 if errors else 0
        if not opts.exit:
            demo.serve_forever()
    except Interrupted as exc:
        console.end_live()
        if summarized:
            console.line(f"\n{exc.signame}: stopping")
        elif demo.traffic_started is not None:
            console.line(f"\n{exc.signame}: stopping; the summary comes once the requests in flight are answered")
            console.line("(press Ctrl-C again to skip waiting for them)")
            demo.interrupted = True
            try:
                demo.finish_traffic()
            except Interrupted:
                console.line("not waiting for the requests in flight")
                demo.write_requests_log()
            signal.signal(signal.SIGINT, _still_stopping)
            signal.signal(signal.SIGTERM, _still_stopping)
            console.line()
            for line in demo.summary():
                console.line(line)
        else:
            console.line(f"\n{exc.signame}: stopping")
        if not summarized:
            code = 128 + exc.signum
    except Exception as exc:
        console.end_live()
        console.line(f"\nthe demo failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, _still_stopping)
        signal.signal(signal.SIGTERM, _still_stopping)
        try:
            demo.shutdown()
        finally:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return code


if __name__ == "__main__":
    sys.exit(main())
