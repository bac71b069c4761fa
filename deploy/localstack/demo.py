"""`make demo`: far more models than fit in memory, served through one URL, with the hot ones staying warm.

Starts a real Redis, two real Triton servers and one `modelyard serve` gateway (`LocalStack`) with a fleet file
(`--config`) declaring the backends (K model slots each) and N models (N much larger than the slots), then drives a
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
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import yaml

from deploy.localstack.console import Console, fmt_latency, percentile, ratio
from deploy.localstack.gateway_state import fmt_count, read_gateway
from deploy.localstack.models import demo_model_names, model_offset, write_model_repository
from deploy.localstack.stack import GatewayProcess, LocalStack
from deploy.localstack.workload import REQUEST_TIMEOUT_S, Arrivals, HoldingSampler, Result, Results, Worker, ZipfPicker

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORKDIR = REPO_ROOT / ".localstack" / "demo"
# A workdir holding this file was made by the demo and may be wiped; any other non-empty directory is refused.
MARKER = ".modelyard-demo"
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
        fleet = write_fleet(o.workdir / "fleet.yaml", stack, self.names, o.capacity)
        with c.step(f"[4/6] starting the gateway (modelyard serve --config {fleet.name})") as s:
            # Listed in the stack before it starts, so that stopping the stack stops it whatever happens.
            config = [f"--config={fleet}"]
            gw = self.gateway = GatewayProcess(stack.redis.url, o.workdir, token=self.token, extra=config)
            stack.gateways.append(gw)
            gw.start()
            s.update(gw.url)
        self.admin = httpx.Client(
            base_url=gw.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=httpx.Timeout(30.0)
        )
        with c.step(
            f"[5/6] the gateway applies {fleet.name}: 2 backends ({o.capacity} slots each) and {o.models} models"
        ) as s:
            self.wait_for_fleet(s.update)

    def wait_for_fleet(self, update: Callable[[str], None], timeout: float = 120.0) -> None:
        """Until every model of the fleet file is registered (the gateway applies it once ready, in bulk)."""
        assert self.admin is not None and self.gateway is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.admin.get("/admin/models", params={"limit": 1000})
            _raise_for(r, "GET /admin/models")
            registered = len(r.json()["models"])
            update(f"{registered}/{len(self.names)} models")
            if registered == len(self.names):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not apply its fleet file in {timeout:g} s:\n{self.gateway.log_tail()}")

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


def write_fleet(path: Path, stack: LocalStack, names: Sequence[str], capacity: int) -> Path:
    """The demo's fleet file: both Tritons as backends and every model, for `modelyard serve --config`."""
    backends = [
        {"id": f"triton-{i}", "kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": capacity}}
        for i, t in enumerate(stack.tritons)
    ]
    models = [{"name": name, "runtime": "triton"} for name in names]
    path.write_text(yaml.safe_dump({"backends": backends, "models": models}, sort_keys=False))
    return path


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
