"""The latency the gateway adds over calling Triton directly, for a warm model, at a fixed request rate.

    .venv/bin/python -m loadtests.overhead [--rate 200] [--requests 2000] [--rounds 5] [--json out.json]
    make bench ARGS='--rate 200 --json /tmp/overhead.json'

What it does:
- starts a LocalStack (real redis-server, 1 Triton from the nvidia-pytriton wheel, 1 `modelyard serve`),
  registers the backend and two Python-backend test models through the admin API, and warms `m001` with one
  request through the gateway;
- measures two targets with the same client and the same request body (`--values` FP32 numbers as KServe v2
  JSON): `direct` (POST Triton's `/v2/models/m001/infer`) and `gateway` (the same path on the gateway);
- in `--rounds` rounds, one phase per target (the order alternates between rounds, so that drift and machine
  noise hit every target alike), each phase `--requests` requests at `--rate` requests per second;
- open loop: a timer thread fires each request at its scheduled time, whether or not earlier ones have
  answered (a new connection is opened when every pooled one is busy), and latency runs from the *scheduled*
  time to the last byte of the answer, so a stall in the gateway or the client shows up as queueing instead of
  being hidden (no coordinated omission);
- every answer must be 200 with the right output (`OUTPUT0` = input + 1, `MODEL_NAME` = m001), or the run fails.

The client is a small asyncio HTTP/1.1 client (uvloop when installed, httptools to parse answers), one pool of
keep-alive connections per target: a few microseconds of client work per request, the same for both targets.
`--compare LABEL=DIR` adds a gateway whose code comes from another checkout DIR (same Redis, same Triton), as a
third target measured in the same interleaved rounds: an A/B of a change under the same noise.
`--py-spy PATH` records one gateway (`--py-spy-target`, default `gateway`) with py-spy for the whole run, in
py-spy's raw (collapsed stacks) format, and prints the share of its busy samples by component (this perturbs the
figures a little: it samples without pausing the process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from deploy.localstack.triton import free_port
from loadtests.harness import (
    PERCENTILES,
    Phase,
    Target,
    add_open_loop_args,
    check_open_loop_args,
    code_version,
    descendants,
    http_request,
    loadavg,
    machine_info,
    percentile,
    pkey,
    pool_for,
    raise_on_errors,
    run_loop,
    run_phase,
    summarize_phases,
    wait_for_quiet,
)

MODEL_NAMES = ("m000", "m001")
MODEL = "m001"  # model i adds i to its input: 1.0 here, so an echo or a wrong model is caught
OFFSET = 1.0
RELAY = "relay"  # the --floor target's name
TARGET_ADDED_MS = {"p50": 0.5, "p99": 2.0}  # the target on the 2-core machines


# ---------------------------------------------------------------------------------------------- checks


def request_body(values: int) -> tuple[bytes, list[float]]:
    """KServe v2 JSON for INPUT0 = [0, 0.5, 1, ...] (exact in FP32), and the expected OUTPUT0."""
    data = [i * 0.5 for i in range(values)]
    body = {"inputs": [{"name": "INPUT0", "shape": [values], "datatype": "FP32", "data": data}]}
    return json.dumps(body, separators=(",", ":")).encode(), [x + OFFSET for x in data]


def check_answer(status: int, body: bytes, expected: list[float], encoding: bytes = b"") -> str | None:
    """None when the answer is right; else what is wrong with it."""
    if status != 200:
        return f"status {status}: {body[:300]!r}"
    try:
        if encoding.strip().lower() == b"gzip":
            body = gzip.decompress(body)
        elif encoding.strip().lower() == b"deflate":
            body = zlib.decompress(body)
        elif encoding.strip().lower() not in (b"", b"identity"):
            return f"answer in content-encoding {encoding!r}"
        outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
        got = outputs["OUTPUT0"]["data"]
        name = outputs["MODEL_NAME"]["data"]
    except (ValueError, KeyError, TypeError, OSError, zlib.error) as exc:
        return f"unexpected answer ({type(exc).__name__}: {exc}): {body[:300]!r}"
    if got != expected:
        return f"wrong OUTPUT0 {got} (expected {expected})"
    if name != [MODEL]:
        return f"answered by {name}, expected {MODEL}"
    return None


def check_phase(phase: Phase, expected: list[float]) -> list[str]:
    verdicts: dict[tuple[int, bytes, bytes], str | None] = {}
    errors: list[str] = []
    for i, key in enumerate(zip(phase.status, phase.bodies, phase.encodings, strict=True)):
        if key not in verdicts:
            verdicts[key] = check_answer(key[0], key[1], expected, key[2])
        problem = verdicts[key]
        if problem is not None:
            errors.append(f"{phase.target} request {i}: {problem}")
    return errors


# ---------------------------------------------------------------------------------------------- stack


def start_compare_gateway(stack: LocalStack, label: str, code_dir: Path) -> GatewayProcess:
    """A gateway running the code of another checkout, sharing the stack's Redis (so the same placement)."""
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    probe = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "import gateway, adapters, placement; print(gateway.__file__, adapters.__file__, placement.__file__)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not all(Path(p).resolve().is_relative_to(code_dir.resolve()) for p in probe):
        raise SystemExit(f"--compare {label}={code_dir}: the gateway code would come from {probe}, not {code_dir}")
    gw = GatewayProcess(stack.redis.url, stack.workdir, token=stack.token)
    gw.args.insert(1, "-P")  # no current directory on sys.path: PYTHONPATH picks the checkout
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(code_dir)
    try:
        gw.start()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    stack.gateways.append(gw)
    return gw


def warm(url: str, path: str, body: bytes, expected: list[float], what: str) -> None:
    r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=180)
    problem = check_answer(r.status_code, r.content, expected)  # httpx has decoded any content-encoding
    if problem is not None:
        raise SystemExit(f"warming {what} at {url}: {problem}")


# ---------------------------------------------------------------------------------------------- report


def fmt_row(label: str, stats: dict[str, float], extra: str = "") -> str:
    cells = "".join(f"{stats[pkey(p)]:>9.3f}" for p in PERCENTILES)
    return f"  {label:<22}{cells}{stats['mean']:>9.3f}{stats['max']:>9.2f}{extra}"


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["setup"]
    code = result["code"]
    redone = sum(ph.get("redone", 0) for rnd in result["rounds"] for ph in rnd["phases"].values())
    lines = [
        f"modelyard gateway overhead, {result['date']}",
        f"  machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['python']}, {m['kernel']}",
        f"  load average before/after: {result['loadavg_before']} / {result['loadavg_after']}",
        f"  code: gateway at commit {code['commit']}"
        + (f" with uncommitted changes in {len(code['uncommitted'])} files" if code["uncommitted"] else "")
        + "".join(f"; {label} from {where}" for label, where in s["compare"].items()),
        f"  setup: 1 Triton {s['triton_version']}, model {s['model']}, {s['gateways']} gateway(s), "
        f"{s['values']} FP32 values as KServe v2 JSON ({s['body_bytes']} bytes), "
        f"Accept-Encoding: {s['accept_encoding'] or 'not sent'}",
        f"  {s['rounds']} rounds x {len(s['targets'])} phases x {s['requests']} requests at {s['rate']:g} req/s, "
        f"open loop, client: {s['client']}",
        f"  phases measured again because other processes used over {s['redo_above']:g}% of the machine: {redone}",
        "",
        f"  latency from scheduled send to last byte, ms{'':<3}"
        + "".join(f"{pkey(p):>9}" for p in PERCENTILES)
        + f"{'mean':>9}{'max':>9}   achieved req/s",
    ]
    for name, t in result["targets"].items():
        lines.append(fmt_row(name, t["latency_ms"], f"   {t['achieved_rate']:.1f}"))
    for name, added in result["added_ms"].items():
        lines.append(fmt_row(f"added by {name}", added))
    lines.append("")
    lines.append(
        f"  {'per round: p50 / p99 ms':<26}"
        + "".join(f"{n:>22}" for n in result["targets"])
        + "   CPU of other processes, % of machine"
    )
    for rnd in result["rounds"]:
        phases = rnd["phases"]
        cells = "".join(f"{phases[n]['p50']:>13.3f} /{phases[n]['p99']:>7.3f}" for n in result["targets"])
        other = " ".join(f"{phases[n]['other_cpu_pct']:.0f}" for n in rnd["order"])
        lines.append(f"  round {rnd['round']} ({'-'.join(x[0] for x in rnd['order'])}){'':<14}{cells}   {other}")
    lines.append("")
    for name, t in result["targets"].items():
        cpu = t["server_cpu_us_per_request"]
        lag = t["send_lag_ms"]
        lines.append(
            f"  {name}: service time p50 {t['service_ms']['p50']:.3f} ms, send lag p50/p99 "
            f"{lag['p50']:.3f}/{lag['p99']:.3f} ms, new connections {t['new_connections']}, "
            f"answers' content-encoding {'/'.join(t['content_encodings'])}, "
            f"server CPU {cpu} us/request ({t['server_sys_cpu_us_per_request']} in the kernel), "
            f"client CPU {t['client_cpu_us_per_request']} us/request"
        )
    lines.append("")
    for name, verdict in result["verdict"].items():
        lines.append(
            f"  {name}: added p50 {verdict['added_p50_ms']:.3f} ms (target <= {TARGET_ADDED_MS['p50']}), "
            f"p99 {verdict['added_p99_ms']:.3f} ms (target <= {TARGET_ADDED_MS['p99']}): "
            + ("target met" if verdict["met"] else "target MISSED")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.overhead",
        description="Latency the gateway adds over calling Triton directly (warm model, open loop, fixed rate).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_open_loop_args(p, "requests")
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections opened per target up front")
    p.add_argument(
        "--accept-encoding", default=None, metavar="VALUE", help="send this Accept-Encoding (default: none is sent)"
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also measure a gateway running the code of checkout DIR (repeatable)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also measure loadtests.relay (a byte-level Python TCP relay) before Triton: the floor of a Python hop",
    )
    p.add_argument("--py-spy", type=Path, default=None, metavar="PATH", help="record a gateway with py-spy (raw)")
    p.add_argument("--py-spy-target", default="gateway", metavar="NAME", help="which gateway --py-spy records")
    p.add_argument(
        "--redo-above",
        type=float,
        default=15.0,
        metavar="PCT",
        help="measure a phase again when other processes used over PCT%% of the machine during it (0: never)",
    )
    p.add_argument("--max-redo", type=int, default=3, help="most re-measurements of one phase")
    args = p.parse_args(argv)
    check_open_loop_args(p, args)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    body, expected = request_body(args.values)
    path = f"/v2/models/{MODEL}/infer"
    compares: list[tuple[str, Path]] = []
    for spec in args.compare:
        label, sep, where = spec.partition("=")
        if not sep or not label or not Path(where).is_dir():
            raise SystemExit(f"--compare wants LABEL=DIR with an existing DIR, got {spec!r}")
        compares.append((label, Path(where)))

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="modelyard-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
    spy: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load_before = loadavg()
    code = code_version()  # now: the gateway processes load this code as they start
    try:
        with LocalStack(workdir, MODEL_NAMES, tritons=1) as stack:
            gw = stack.add_gateway()
            extra = [(label, start_compare_gateway(stack, label, where)) for label, where in compares]
            stack.register(capacity=len(MODEL_NAMES))
            triton = stack.tritons[0]
            warm(gw.url, path, body, expected, "the model through the gateway")  # this request loads it
            warm(triton.url, path, body, expected, "the model on Triton")
            for _, g in extra:
                warm(g.url, path, body, expected, "the model through the compared gateway")
            triton_version = httpx.get(f"{triton.url}/v2", timeout=10).json().get("version", "?")
            gateways = [("gateway", gw), *extra]
            print(
                f"stack up: Triton {triton.url} (pid {triton.pid}), "
                + ", ".join(f"{n} {g.url} (pid {g.proc.pid if g.proc else '?'})" for n, g in gateways),
                file=sys.stderr,
            )
            if args.py_spy is not None:
                chosen = dict(gateways).get(args.py_spy_target)
                if chosen is None:
                    raise SystemExit(f"--py-spy-target {args.py_spy_target!r} is not one of {[n for n, _ in gateways]}")
                spy = start_py_spy(chosen, args.py_spy)
            ae = args.accept_encoding
            targets = [Target("direct", triton.url, pool_for(triton.url), http_request(triton.url, path, body, ae))]
            targets[0].pids = descendants(triton.pid)  # the server and its Python-backend stub
            for name, g in gateways:
                pids = [g.proc.pid] if g.proc else []
                targets.append(Target(name, g.url, pool_for(g.url), http_request(g.url, path, body, ae), pids))
            if stack.redis.pid is not None:
                targets[0].pids.append(stack.redis.pid)  # counted as ours, not as other load
            if args.floor:
                relay, relay_url = start_relay(triton.url)
                warm(relay_url, path, body, expected, "the model through the relay")
                request = http_request(relay_url, path, body, ae)
                targets.append(Target(RELAY, relay_url, pool_for(relay_url), request, [relay.pid]))
            phases, rounds, client = run_loop(_measure(targets, args, expected))
            if spy is not None:
                stop_py_spy(spy)
                spy = None
    finally:
        if spy is not None:
            stop_py_spy(spy)
        if relay is not None:
            stop_process(relay)
        if tmp is not None:
            tmp.cleanup()

    by_target = {t.name: summarize_phases([ph for ph in phases if ph.target == t.name]) for t in targets}
    direct = by_target["direct"]["latency_ms"]
    added = {
        name: {k: round(v - direct[k], 4) for k, v in t["latency_ms"].items()}
        for name, t in by_target.items()
        if name != "direct"
    }
    verdict = {
        name: {
            "added_p50_ms": a["p50"],
            "added_p99_ms": a["p99"],
            "met": a["p50"] <= TARGET_ADDED_MS["p50"] and a["p99"] <= TARGET_ADDED_MS["p99"],
        }
        for name, a in added.items()
        if name != RELAY
    }
    return {
        "benchmark": "gateway overhead (loadtests/overhead.py)",
        "date": date,
        "command": " ".join([".venv/bin/python -m loadtests.overhead", *map(shlex.quote, sys.argv[1:])]),
        "machine": machine_info(),
        "code": code,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "setup": {
            "tritons": 1,
            "gateways": 1 + len(compares),
            "compare": {label: str(where) for label, where in compares},
            "triton_version": triton_version,
            "model": f"{MODEL} (Python backend, FP32 [-1] -> input + 1, plus its name)",
            "values": args.values,
            "body_bytes": len(body),
            "accept_encoding": args.accept_encoding,
            "rate": args.rate,
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "phase_warmup": args.phase_warmup,
            "quiet_pct": args.quiet,
            "redo_above": args.redo_above,
            "targets": [t.name for t in targets],
            "client": client,
            "py_spy": str(args.py_spy) if args.py_spy else None,
            "py_spy_target": args.py_spy_target if args.py_spy else None,
        },
        "targets": by_target,
        "added_ms": added,
        "verdict": verdict,
        "rounds": rounds,
        "profile": profile_components(args.py_spy) if args.py_spy is not None else None,
    }


async def _measure(
    targets: list[Target], args: argparse.Namespace, expected: list[float]
) -> tuple[list[Phase], list[dict[str, Any]], str]:
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    client = f"asyncio HTTP/1.1 keep-alive pool per target ({loop_name} loop, httptools parser), timer thread"
    ours = sorted({os.getpid(), *(pid for t in targets for pid in t.pids)})
    try:
        for t in targets:
            await t.pool.top_up(args.connections)
            if args.warmup:
                raise_on_errors(check_phase(await run_phase(t, args.warmup, args.rate, ours), expected))
        phases: list[Phase] = []
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            shift = r % len(targets)
            order = targets[shift:] + targets[:shift]
            if r % 2 == 1 and len(targets) > 2:
                order = order[::-1]
            summary: dict[str, Any] = {"round": r + 1, "order": [t.name for t in order], "phases": {}}
            for t in order:
                quiet = None
                if args.quiet > 0:
                    quiet = await wait_for_quiet(ours, args.quiet, args.quiet_wait)
                await t.pool.top_up(args.connections)
                if args.phase_warmup:
                    raise_on_errors(check_phase(await run_phase(t, args.phase_warmup, args.rate, ours), expected))
                redone = 0
                while True:
                    ph = await run_phase(t, args.requests, args.rate, ours)
                    raise_on_errors(check_phase(ph, expected))
                    if args.redo_above <= 0 or ph.other_cpu_pct <= args.redo_above or redone >= args.max_redo:
                        break
                    # Decided on other processes' CPU alone, never on the latencies: no target is favoured.
                    redone += 1
                    print(
                        f"round {r + 1} {t.name}: other processes used {ph.other_cpu_pct:.0f}% of the machine "
                        f"during the phase; measuring it again ({redone}/{args.max_redo})",
                        file=sys.stderr,
                    )
                    if args.quiet > 0:
                        quiet = await wait_for_quiet(ours, args.quiet, args.quiet_wait)
                s = sorted(ph.latency_ms)
                summary["phases"][t.name] = {
                    "p50": round(percentile(s, 50), 4),
                    "p99": round(percentile(s, 99), 4),
                    "achieved_rate": round(ph.achieved_rate, 2),
                    "other_cpu_pct": round(ph.other_cpu_pct, 1),
                    "other_cpu_pct_before": None if quiet is None else round(quiet, 1),
                    "redone": redone,
                }
                phases.append(ph)
                print(
                    f"round {r + 1}/{args.rounds} {t.name:<10} p50 {percentile(s, 50):.3f} ms  "
                    f"p99 {percentile(s, 99):.3f} ms  {ph.achieved_rate:.1f} req/s  "
                    f"(other processes: {ph.other_cpu_pct:.0f}% of the machine)",
                    file=sys.stderr,
                )
            rounds.append(summary)
        return phases, rounds, client
    finally:
        for t in targets:
            t.pool.close()
        await asyncio.sleep(0.05)  # let the transports close before the servers are stopped


def start_relay(upstream_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """`loadtests.relay` in front of `upstream_url`; returns the process and its URL once it accepts."""
    port = free_port()
    upstream = upstream_url.split("://", 1)[1]
    cmd = [sys.executable, "-m", "loadtests.relay", "--port", str(port), "--upstream", upstream]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the relay exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    stop_process(proc)
    raise SystemExit("the relay did not listen within 15 s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_py_spy(gw: GatewayProcess, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    assert gw.proc is not None
    # --nonblocking: sample without pausing the gateway (pausing it at this rate made it fall behind).
    cmd = [
        exe,
        "record",
        "--pid",
        str(gw.proc.pid),
        "--rate",
        "500",
        "--nonblocking",
        "--format",
        "raw",
        "-o",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"py-spy exited at once: {err}")
    return proc


# Innermost matching frame decides; earlier entries win when several match.
PROFILE_COMPONENTS = (
    ("failed imports (httpcore's `import sniffio`)", ("<frozen importlib", "_distutils_hack")),
    ("event loop and I/O (uvloop, system calls)", ("asyncio/runners.py", "asyncio/base_events.py")),
    (
        "upstream client (httpx, httpcore, anyio; adapters' HTTP code)",
        ("httpx/", "httpcore/", "anyio/", "sniffio/", "adapters/http_forward.py", "adapters/upstream.py"),
    ),
    ("uvicorn (HTTP server, ASGI)", ("uvicorn/",)),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("modelyard's own code (gateway/, adapters/, placement/)", ("gateway/", "adapters/", "placement/")),
    ("asyncio (tasks, futures, timeouts)", ("asyncio/",)),
)
IDLE_FRAMES = ("Condition.wait", "Event.wait (threading", "WorkerThread.run", "_worker (concurrent")


def profile_components(path: Path) -> dict[str, Any]:
    """Share of the busy samples of a py-spy raw profile by component (idle worker threads left out)."""
    counts: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        if any(idle in stack for idle in IDLE_FRAMES):
            continue
        frames = stack.split(";")
        name = "event loop and I/O (uvloop, system calls)"
        for frame in reversed(frames):
            where = frame.rsplit("(", 1)[-1]
            hit = next((label for label, keys in PROFILE_COMPONENTS if any(k in where for k in keys)), None)
            if hit is not None:
                name = hit
                break
        counts[name] = counts.get(name, 0) + int(n)
        total += int(n)
    shares = {k: round(100.0 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return {"samples": total, "percent": shares}


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if result.get("profile"):
        prof = result["profile"]
        print(f"\npy-spy profile of {args.py_spy_target} ({prof['samples']} busy samples, in {args.py_spy}):")
        for name, pct in prof["percent"].items():
            print(f"  {pct:5.1f}%  {name}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
