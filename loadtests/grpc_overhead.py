"""The latency the gateway adds over calling Triton directly, over gRPC, for a warm model, at a fixed request rate.

    .venv/bin/python -m loadtests.grpc_overhead [--rate 200] [--requests 2000] [--rounds 5] [--json out.json]
    make bench-grpc ARGS='--rate 200 --json /tmp/grpc-overhead.json'

The method is `loadtests/overhead.py`'s, over gRPC instead of HTTP:
- starts a LocalStack (real redis-server, 1 Triton from the nvidia-pytriton wheel, 1 `modelyard serve`),
  registers the backend and two Python-backend test models through the admin API, and warms `m001` with one
  `ModelInfer` through the gateway's gRPC port (that call loads it);
- measures two targets with the same client and the same request message (`--values` FP32 numbers in
  `raw_input_contents`, as `tritonclient.grpc` sends them): `direct` (Triton's gRPC port) and `gateway`
  (the gateway's gRPC port), both `/inference.GRPCInferenceService/ModelInfer`;
- in `--rounds` rounds, one phase per target (the order alternates between rounds, so that drift and machine
  noise hit both alike), each phase `--requests` requests at `--rate` requests per second;
- open loop: a timer thread starts each call at its scheduled time (grpc's future API on one channel per
  target, an HTTP/2 connection that carries any number of calls at once), whether or not earlier ones have
  answered, and latency runs from the *scheduled* time to the answer's arrival, so a stall shows up as
  queueing instead of being hidden (no coordinated omission);
- every answer must be OK with the right output (`OUTPUT0` = input + 1, `MODEL_NAME` = m001), or the run fails;
- before each phase it waits (`--quiet`) for a 1 s window where other processes use little CPU, and records
  how much they used during the phase.

The client is grpc's synchronous stub with futures: the C core does the I/O, and the same client code runs
for both targets. Don't read figures from a shared or busy machine: docs/benchmarks.md says how they are taken.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.service_pb2 as pb

from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import free_port
from loadtests.harness import (
    PERCENTILES,
    PhaseTimes,
    add_open_loop_args,
    check_open_loop_args,
    code_version,
    cpu_split,
    descendants,
    emit,
    loadavg,
    machine_info,
    other_cpu_pct,
    percentile,
    pkey,
    processes_user_sys_s,
    raise_on_errors,
    summarize_times,
    wait_for_quiet,
)
from loadtests.overhead import (
    TARGET_ADDED_MS,
)

MODEL_NAMES = ("m000", "m001")
MODEL = "m001"  # model i adds i to its input: 1.0 here, so an echo or a wrong model is caught
OFFSET = 1.0
METHOD = "/inference.GRPCInferenceService/ModelInfer"
CLOCK = time.perf_counter


@dataclass
class Target:
    name: str
    address: str  # host:port
    channel: grpc.Channel
    pids: list[int] = field(default_factory=list)  # the server's processes, for CPU accounting

    def method(self) -> Any:
        return self.channel.unary_unary(METHOD)  # raw bytes both ways


@dataclass
class Phase(PhaseTimes):
    """One phase of gRPC calls: the times, and each call's status code name and answer."""

    codes: list[str]
    answers: list[bytes]
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_cpu_pct: float = 0.0


def request_message(values: int) -> tuple[bytes, list[float]]:
    """A serialized ModelInferRequest with INPUT0 = [0, 0.5, 1, ...] (exact in FP32), and the expected OUTPUT0."""
    data = np.arange(values, dtype=np.float32) * np.float32(0.5)
    req = pb.ModelInferRequest(model_name=MODEL)
    tensor = req.inputs.add()
    tensor.name = "INPUT0"
    tensor.datatype = "FP32"
    tensor.shape.append(values)
    req.raw_input_contents.append(data.tobytes())
    return req.SerializeToString(), [float(x) + OFFSET for x in data]


def check_answer(code: str, answer: bytes, expected: list[float]) -> str | None:
    """None when the answer is right; else what is wrong with it."""
    if code != "OK":
        return f"status {code}: {answer[:300]!r}"
    try:
        resp = pb.ModelInferResponse.FromString(answer)
        raw = dict(zip((o.name for o in resp.outputs), resp.raw_output_contents, strict=True))
        got = np.frombuffer(raw["OUTPUT0"], dtype=np.float32).tolist()
        name = raw["MODEL_NAME"][4:].decode()  # BYTES: a 4-byte length, then the string
    except Exception as exc:
        return f"unexpected answer ({type(exc).__name__}: {exc}): {answer[:300]!r}"
    if got != expected:
        return f"wrong OUTPUT0 {got} (expected {expected})"
    if name != MODEL:
        return f"answered by {name}, expected {MODEL}"
    return None


def check_phase(phase: Phase, expected: list[float]) -> list[str]:
    verdicts: dict[tuple[str, bytes], str | None] = {}
    errors: list[str] = []
    for i, key in enumerate(zip(phase.codes, phase.answers, strict=True)):
        if key not in verdicts:
            verdicts[key] = check_answer(key[0], key[1], expected)
        if verdicts[key] is not None:
            errors.append(f"{phase.target} request {i}: {verdicts[key]}")
    return errors


def run_phase(target: Target, body: bytes, n: int, rate: float, ours: Sequence[int] = ()) -> Phase:
    """Open loop: call i starts at start + i/rate, from a timer thread, wherever the earlier ones are."""
    start = CLOCK() + 0.02
    scheduled = [start + i / rate for i in range(n)]
    phase = Phase(target.name, rate, scheduled, [math.nan] * n, [math.nan] * n, [""] * n, [b""] * n)
    lock = threading.Lock()
    remaining = n
    finished = threading.Event()
    method = target.method()

    def on_done(i: int, fut: grpc.Future) -> None:
        nonlocal remaining
        phase.done[i] = CLOCK()
        try:
            phase.answers[i] = fut.result()
            phase.codes[i] = "OK"
        except grpc.RpcError as exc:
            phase.codes[i] = exc.code().name  # type: ignore[attr-defined]
            phase.answers[i] = (exc.details() or "").encode()  # type: ignore[attr-defined]
        with lock:
            remaining -= 1
            if remaining == 0:
                finished.set()

    cpu_before = processes_user_sys_s(target.pids)
    client_before = time.process_time()
    load_before = cpu_split(ours)
    for i, at in enumerate(scheduled):
        delay = at - CLOCK()
        if delay > 0:
            time.sleep(delay)
        phase.sent[i] = CLOCK()
        fut = method.future(body, timeout=30.0)
        fut.add_done_callback(lambda f, i=i: on_done(i, f))
    if not finished.wait(timeout=60.0):
        raise SystemExit(f"{target.name}: {remaining} calls unanswered 60 s after the phase ended")
    phase.client_cpu_s = time.process_time() - client_before
    phase.server_cpu_s = sum(processes_user_sys_s(target.pids)) - sum(cpu_before)
    phase.other_cpu_pct = other_cpu_pct(load_before, cpu_split(ours))
    return phase


def summarize_phases(phases: Sequence[Phase]) -> dict[str, Any]:
    n = sum(len(ph.done) for ph in phases)
    return {
        **summarize_times(phases),
        "server_cpu_us_per_request": round(sum(ph.server_cpu_s for ph in phases) / n * 1e6, 1),
        "client_cpu_us_per_request": round(sum(ph.client_cpu_s for ph in phases) / n * 1e6, 1),
        "other_cpu_pct_max": round(max(ph.other_cpu_pct for ph in phases), 1),
    }


def measure(targets: list[Target], body: bytes, expected: list[float], args: argparse.Namespace) -> list[Phase]:
    ours = sorted({os.getpid(), *(pid for t in targets for pid in t.pids)})
    for t in targets:
        if args.warmup:
            raise_on_errors(check_phase(run_phase(t, body, args.warmup, args.rate, ours), expected))
    phases: list[Phase] = []
    for r in range(args.rounds):
        shift = r % len(targets)
        order = targets[shift:] + targets[:shift]
        for t in order:
            if args.quiet > 0:
                asyncio.run(wait_for_quiet(ours, args.quiet, args.quiet_wait))
            if args.phase_warmup:
                raise_on_errors(check_phase(run_phase(t, body, args.phase_warmup, args.rate, ours), expected))
            ph = run_phase(t, body, args.requests, args.rate, ours)
            raise_on_errors(check_phase(ph, expected))
            phases.append(ph)
            s = sorted(ph.latency_ms)
            print(
                f"round {r + 1}/{args.rounds} {t.name:<8} p50 {percentile(s, 50):.3f} ms  "
                f"p99 {percentile(s, 99):.3f} ms  {ph.achieved_rate:.1f} calls/s  "
                f"(other processes: {ph.other_cpu_pct:.0f}% of the machine)",
                file=sys.stderr,
            )
    return phases


def start_prototype(mode: str, upstream: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """loadtests.prototypes.grpc_forward in `mode`, forwarding to `upstream`; waits until it takes calls."""
    address = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "loadtests.prototypes.grpc_forward", "--mode", mode]
    log = open(workdir / f"proto-{mode}.log", "ab")
    proc = subprocess.Popen([*cmd, "--listen", address, "--upstream", upstream], stdout=log, stderr=log)
    log.close()
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return proc, address


def run(args: argparse.Namespace) -> dict[str, Any]:
    body, expected = request_message(args.values)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="modelyard-bench-grpc-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load_before = loadavg()
    code = code_version()
    targets: list[Target] = []
    prototypes: list[subprocess.Popen[bytes]] = []
    try:
        with LocalStack(workdir, MODEL_NAMES, tritons=1) as stack:
            gw = stack.add_gateway()
            stack.register(capacity=len(MODEL_NAMES))
            triton = stack.tritons[0]
            direct = Target("direct", triton.grpc_url, grpc.insecure_channel(triton.grpc_url))
            direct.pids = descendants(triton.pid)  # the server and its Python-backend stub
            if stack.redis.pid is not None:
                direct.pids.append(stack.redis.pid)  # counted as ours, not as other load
            gateway = Target("gateway", gw.grpc_url, grpc.insecure_channel(gw.grpc_url))
            gateway.pids = [gw.proc.pid] if gw.proc else []
            targets = [direct, gateway]
            if args.threads_gateway:  # a second gateway on the same Redis state, with --grpc-server threads
                gwt = stack.add_gateway(extra=["--grpc-server", "threads"])
                targets.append(Target("gateway-threads", gwt.grpc_url, grpc.insecure_channel(gwt.grpc_url)))
                targets[-1].pids = [gwt.proc.pid] if gwt.proc else []
            for mode in args.prototype:
                proc, address = start_prototype(mode, triton.grpc_url, workdir)
                prototypes.append(proc)
                targets.append(Target(f"proto-{mode}", address, grpc.insecure_channel(address), [proc.pid]))
            for t in (gateway, direct, *targets[2:]):  # through the gateway first: that call loads the model
                answer = t.method()(body, timeout=180)
                problem = check_answer("OK", answer, expected)
                if problem is not None:
                    raise SystemExit(f"warming the model through {t.name}: {problem}")
            print(f"stack up: Triton gRPC {triton.grpc_url}, gateway gRPC {gw.grpc_url}", file=sys.stderr)
            phases = measure(targets, body, expected, args)
    finally:
        for t in targets:
            t.channel.close()
        for proc in prototypes:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        if tmp is not None:
            tmp.cleanup()

    by_target = {t.name: summarize_phases([ph for ph in phases if ph.target == t.name]) for t in targets}
    direct_lat = by_target["direct"]["latency_ms"]
    added_by = {
        name: {k: round(v - direct_lat[k], 4) for k, v in t["latency_ms"].items()}
        for name, t in by_target.items()
        if name != "direct"
    }
    added = added_by["gateway"]
    return {
        "benchmark": "gateway overhead over gRPC (loadtests/grpc_overhead.py)",
        "date": date,
        "command": " ".join([".venv/bin/python -m loadtests.grpc_overhead", *map(shlex.quote, sys.argv[1:])]),
        "machine": machine_info(),
        "code": code,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "setup": {
            "model": f"{MODEL} (Python backend, FP32 [-1] -> input + 1, plus its name)",
            "values": args.values,
            "message_bytes": len(body),
            "rate": args.rate,
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "phase_warmup": args.phase_warmup,
            "quiet_pct": args.quiet,
            "client": f"grpcio {grpc.__version__} sync stub, futures, one channel per target, timer thread",
        },
        "targets": by_target,
        "added_ms": added,
        "added_ms_by_target": added_by,
        "verdict": {
            "added_p50_ms": added["p50"],
            "added_p99_ms": added["p99"],
            "met": added["p50"] <= TARGET_ADDED_MS["p50"] and added["p99"] <= TARGET_ADDED_MS["p99"],
        },
    }


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["setup"]
    lines = [
        f"modelyard gateway overhead over gRPC, {result['date']}",
        f"  machine: {m['cpu']}, {m['cores']} cores, {m['python']}; load average before/after: "
        f"{result['loadavg_before']} / {result['loadavg_after']}",
        f"  code: commit {result['code']['commit']}"
        + (
            f" with uncommitted changes in {len(result['code']['uncommitted'])} files"
            if result["code"]["uncommitted"]
            else ""
        ),
        f"  setup: 1 Triton, model {s['model']}, {s['values']} FP32 values ({s['message_bytes']}-byte message)",
        f"  {s['rounds']} rounds x {len(result['targets'])} phases x {s['requests']} calls at {s['rate']:g} calls/s, "
        "open loop",
        f"  client: {s['client']}",
        "",
        "  latency from scheduled send to answer, ms"
        + "".join(f"{pkey(p):>9}" for p in PERCENTILES)
        + f"{'mean':>9}{'max':>9}",
    ]
    for name, t in result["targets"].items():
        lat = t["latency_ms"]
        lines.append(
            f"  {name:<40}"
            + "".join(f"{lat[pkey(p)]:>9.3f}" for p in PERCENTILES)
            + f"{lat['mean']:>9.3f}{lat['max']:>9.2f}"
        )
    for name, a in result["added_ms_by_target"].items():
        lines.append(
            f"  {'added by ' + name:<40}" + "".join(f"{a[pkey(p)]:>9.3f}" for p in PERCENTILES) + f"{a['mean']:>9.3f}"
        )
    lines.append("")
    for name, t in result["targets"].items():
        lines.append(
            f"  {name}: {t['achieved_rate']:.1f} calls/s, send lag p99 {t['send_lag_ms']['p99']:.3f} ms, "
            f"server CPU {t['server_cpu_us_per_request']} us/call, "
            f"client CPU {t['client_cpu_us_per_request']} us/call, "
            f"other processes up to {t['other_cpu_pct_max']}% of the machine"
        )
    v = result["verdict"]
    lines.append(
        f"  added p50 {v['added_p50_ms']:.3f} ms (HTTP's target <= {TARGET_ADDED_MS['p50']}), "
        f"p99 {v['added_p99_ms']:.3f} ms (<= {TARGET_ADDED_MS['p99']}): " + ("met" if v["met"] else "MISSED")
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.grpc_overhead",
        description="Latency the gateway adds over calling Triton directly over gRPC (warm model, open loop).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_open_loop_args(p, "calls")
    p.add_argument(
        "--prototype",
        action="append",
        default=[],
        choices=("sync", "aio"),
        help="also measure loadtests.prototypes.grpc_forward in this mode in front of Triton (repeatable)",
    )
    p.add_argument(
        "--threads-gateway",
        action="store_true",
        help="also measure a second gateway with --grpc-server threads ('gateway' runs the default server)",
    )
    args = p.parse_args(argv)
    check_open_loop_args(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
