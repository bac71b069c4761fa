"""10,000 registered models and 200 routes on two real Tritons: registration, warm cost, memory, start, admin reads.

    .venv/bin/python -m loadtests.scale [--models 10000] [--routes 200] [--sample 500] [--json out.json]
    make bench-scale ARGS='--json docs/benchmarks/scale-1.json'

What it does, on one LocalStack (a real redis-server, two Tritons from the nvidia-pytriton wheel, real
`modelyard serve` processes; each gateway has a registry of its own in Redis under its own key prefix; all on
127.0.0.1):
- registration, each way on a fresh registry: `--sample` one-by-one `PUT /admin/models/{name}` over one keep-alive
  connection, timed and *extrapolated* to `--models` (said so in the output); one bulk `PUT /admin/models` with
  every model; `modelyard apply -f` of a fleet file (YAML, and JSON) holding the backends, the models and the
  routes; routes one by one (`PUT /admin/routes/{name}`; there is no bulk form);
- the gateway's memory per registered model: its RSS (/proc/PID/status) before and after the bulk registration,
  and the RSS of freshly started gateways at the small and the large size;
- a new gateway's start-to-ready time (process start to the first 200 from /readyz) at both sizes, alternating;
- warm request cost with `--small` vs `--models` registered: two gateways (one per size) each with one warm model
  (m001 on the small one, m002 on the large one; each model adds its number to the input, every answer checked),
  open loop from loadtests.harness at `--rate`, rounds in rotating order; latency p50/p99 and the gateway's CPU
  per request (/proc);
- the gateway's CPU while idle at both sizes (background work that grows with the registry);
- `/admin/models` paged through to the end (limit 100 and 1000), `/admin/placement`, `/ui` and `/metrics`:
  response time (median of `--reads`) and size, at both sizes.

The machine is shared and busy: only figures within one run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.localstack.stack import GatewayProcess, LocalStack
from loadtests.harness import (
    Phase,
    Target,
    add_open_loop_args,
    check_open_loop_args,
    code_version,
    emit,
    http_request,
    loadavg,
    machine_info,
    percentile,
    pool_for,
    processes_cpu_s,
    raise_on_errors,
    run_loop,
    run_phase,
    summarize_phases,
    wait_for_quiet,
)
from loadtests.overhead import IDLE_FRAMES, request_body, start_py_spy, stop_py_spy

REAL = tuple(f"m{i:03d}" for i in range(10))  # in the Tritons' repository; model i adds i to its input
WARM = {"small": "m001", "large": "m002"}
CAPACITY = 4
SIZES = ("small", "large")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.scale", description=__doc__.split("\n\n")[0])
    add_open_loop_args(p, rounds=4)
    p.set_defaults(quiet=0.0, warmup=300)
    p.add_argument("--models", type=int, default=10_000, help="models registered in the large registry")
    p.add_argument("--routes", type=int, default=200, help="routes in the large registry (two splits each)")
    p.add_argument("--small", type=int, default=10, help="models registered in the small registry")
    p.add_argument("--sample", type=int, default=500, help="one-by-one PUTs timed, then extrapolated to --models")
    p.add_argument("--reads", type=int, default=5, help="times each admin read is timed (median reported)")
    p.add_argument("--starts", type=int, default=3, help="gateway starts timed per size")
    p.add_argument(
        "--idle",
        type=float,
        default=62.0,
        help="seconds the idle CPU is measured per gateway (62: two of the view's 30 s resyncs, whatever the phase)",
    )
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help="also profile bulk PUT and paging here")
    args = p.parse_args(argv)
    check_open_loop_args(p, args)
    if args.models < len(REAL) or args.small < 3 or args.small > len(REAL) or args.sample < 1:
        p.error(f"--small must be 3..{len(REAL)}, --models at least {len(REAL)}, --sample positive")
    return args


def model_names(n: int) -> list[str]:
    """The real models first, then synthetic names (registered, never requested, so never loaded)."""
    return list(REAL[:n]) + [f"s{i:05d}" for i in range(max(0, n - len(REAL)))]


def route_specs(n: int, models: Sequence[str]) -> list[dict[str, Any]]:
    synthetic = [m for m in models if m not in REAL]
    return [
        {
            "name": f"r{i:03d}",
            "splits": [
                {"model": synthetic[(2 * i) % len(synthetic)], "weight": 90},
                {"model": synthetic[(2 * i + 1) % len(synthetic)], "weight": 10},
            ],
        }
        for i in range(n)
    ]


def backend_specs(stack: LocalStack) -> list[dict[str, Any]]:
    return [
        {"id": f"triton-{i}", "kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": CAPACITY}}
        for i, t in enumerate(stack.tritons)
    ]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pid_of(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    return gw.proc.pid


def put_backends(admin: httpx.Client, stack: LocalStack) -> None:
    for b in backend_specs(stack):
        admin.put(f"/admin/backends/{b['id']}", json={k: v for k, v in b.items() if k != "id"}).raise_for_status()


def timed(fn: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


# ---------------------------------------------------------------------------------------------- registration


def one_by_one(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    gw = stack.add_gateway(prefix="scaleone")
    names = model_names(args.models)[: args.sample]
    with stack.admin(gw) as admin:
        put_backends(admin, stack)
        took, _ = timed(
            lambda: [admin.put(f"/admin/models/{n}", json={"runtime": "triton"}).raise_for_status() for n in names]
        )
    gw.stop()
    stack.gateways.remove(gw)
    return {
        "sampled": len(names),
        "seconds": round(took, 3),
        "per_model_ms": round(took / len(names) * 1e3, 3),
        "extrapolated_seconds_for_all": round(took / len(names) * args.models, 1),
        "note": f"{len(names)} sequential PUTs over one keep-alive connection, extrapolated linearly to {args.models}",
    }


def bulk(stack: LocalStack, gw: GatewayProcess, models: list[str], routes: list[dict[str, Any]]) -> dict[str, Any]:
    pid = pid_of(gw)
    with stack.admin(gw) as admin:
        put_backends(admin, stack)
        rss_before = rss_bytes(pid)
        body = {"models": [{"name": n, "runtime": "triton"} for n in models]}
        took, r = timed(lambda: admin.put("/admin/models", json=body))
        r.raise_for_status()
        stored = len(r.json()["models"])
        time.sleep(1.0)  # let the view's own refresh settle before reading RSS (not a test: a benchmark's pause)
        rss_models = rss_bytes(pid)
        rtook, _ = timed(
            lambda: [
                admin.put(f"/admin/routes/{x['name']}", json={"splits": x["splits"]}).raise_for_status() for x in routes
            ]
        )
        rss_routes = rss_bytes(pid)
    return {
        "models": len(models),
        "stored": stored,
        "request_bytes": len(json.dumps(body)),
        "seconds": round(took, 3),
        "routes": len(routes),
        "routes_one_by_one_seconds": round(rtook, 3),
        "rss_before_bytes": rss_before,
        "rss_after_models_bytes": rss_models,
        "rss_after_routes_bytes": rss_routes,
        "rss_per_model_bytes": round((rss_models - rss_before) / len(models)),
    }


def apply_fleet(stack: LocalStack, models: list[str], routes: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    gw = stack.add_gateway(prefix=f"scaleapply{fmt}")
    fleet = {
        "backends": backend_specs(stack),
        "models": [{"name": n, "runtime": "triton"} for n in models],
        "routes": routes,
    }
    path = stack.workdir / f"fleet.{fmt}"
    path.write_text(json.dumps(fleet) if fmt == "json" else yaml.safe_dump(fleet, sort_keys=False))
    cmd = [sys.executable, "-m", "gateway.cli", "apply", "-f", str(path), "--url", gw.url, f"--token={stack.token}"]
    took, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=1800))
    if proc.returncode != 0:
        raise SystemExit(f"modelyard apply -f {path} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    created = sum(1 for line in lines if line.endswith(" created"))
    # the file's parse alone, in this process, to split the figure
    ptook, _ = timed(lambda: subprocess.run([*cmd[:3], "diff", *cmd[4:]], capture_output=True, timeout=1800))
    gw.stop()
    stack.gateways.remove(gw)
    return {
        "format": fmt,
        "file_bytes": path.stat().st_size,
        "seconds": round(took, 3),
        "created": created,
        "diff_afterwards_seconds": round(ptook, 3),
    }


# ---------------------------------------------------------------------------------------------- reads


def admin_reads(stack: LocalStack, gw: GatewayProcess, reads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with stack.admin(gw) as admin:
        for limit in (100, 1000):

            def page_all(limit: int = limit) -> tuple[int, int]:
                cursor: str | None = None
                seen = pages = 0
                while True:
                    params: dict[str, Any] = {"limit": limit}
                    if cursor:
                        params["cursor"] = cursor
                    r = admin.get("/admin/models", params=params).raise_for_status().json()
                    seen += len(r["models"])
                    pages += 1
                    cursor = r["next_cursor"]
                    if not cursor:
                        return seen, pages

            took, (seen, pages) = timed(page_all)
            out[f"models_paged_limit_{limit}"] = {"seconds": round(took, 3), "models": seen, "pages": pages}
        # /ui is a static page whose script polls /admin/placement, /admin/stats and /admin/rollouts
        pages = ("/admin/placement", "/ui", "/admin/stats", "/admin/rollouts", "/metrics", "/admin/models?limit=1000")
        for path in (*pages, "/readyz"):
            times, size = [], 0
            for _ in range(reads):
                took, r = timed(lambda path=path: admin.get(path))
                r.raise_for_status()
                times.append(took * 1e3)
                size = len(r.content)
            out[path] = {
                "median_ms": round(sorted(times)[len(times) // 2], 2),
                "max_ms": round(max(times), 2),
                "bytes": size,
            }
    return out


def idle_cpu(gw: GatewayProcess, seconds: float) -> float:
    pid = pid_of(gw)
    before = processes_cpu_s([pid])
    time.sleep(seconds)
    return round((processes_cpu_s([pid]) - before) / seconds * 100, 2)


def starts(stack: LocalStack, prefixes: dict[str, str], n: int) -> dict[str, Any]:
    """Start-to-ready of a new gateway on each registry, alternating; the RSS of each once ready."""
    out: dict[str, Any] = {s: {"seconds": [], "rss_bytes": []} for s in prefixes}
    for i in range(n):
        order = list(prefixes) if i % 2 == 0 else list(prefixes)[::-1]
        for size in order:
            gw = GatewayProcess(stack.redis.url, stack.workdir, token=stack.token, prefix=prefixes[size])
            took, _ = timed(lambda gw=gw: gw.start(timeout=300))
            out[size]["seconds"].append(round(took, 3))
            time.sleep(1.0)  # settle, then read memory
            out[size]["rss_bytes"].append(rss_bytes(pid_of(gw)))
            gw.stop()
    for size in prefixes:
        s = sorted(out[size]["seconds"])
        out[size]["median_seconds"] = s[len(s) // 2]
        r = sorted(out[size]["rss_bytes"])
        out[size]["median_rss_bytes"] = r[len(r) // 2]
    return out


# ---------------------------------------------------------------------------------------------- profile


def hot_functions(raw: Path, top: int = 12) -> dict[str, Any]:
    """Share of busy samples in which each modelyard function is on the stack (py-spy raw/collapsed format)."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit() or any(idle in stack for idle in IDLE_FRAMES):
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            if any(k in frame for k in ("gateway/", "placement/", "adapters/", "yaml/")):
                counts[frame] = counts.get(frame, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return {"samples": total, "percent_on_stack": {k: round(100 * v / max(total, 1), 1) for k, v in ranked}}


def profile(stack: LocalStack, models: list[str], out_dir: Path) -> dict[str, Any]:
    """py-spy on a fresh gateway during the bulk registration and then during a full `/admin/models` paging."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gw = stack.add_gateway(prefix="scaleprof")
    result: dict[str, Any] = {}
    with stack.admin(gw) as admin:
        put_backends(admin, stack)
        body = {"models": [{"name": n, "runtime": "triton"} for n in models]}
        steps = {
            "bulk_put": lambda: admin.put("/admin/models", json=body).raise_for_status(),
            "paging_limit_1000": lambda: [
                admin.get(
                    "/admin/models", params={"limit": 1000, "cursor": c} if c else {"limit": 1000}
                ).raise_for_status()
                for c in [None, *models[999:-1:1000]]
            ],
        }
        for step, fn in steps.items():
            raw = out_dir / f"scale-{step}.txt"
            spy = start_py_spy(gw, raw)
            took, _ = timed(fn)
            stop_py_spy(spy)
            result[step] = {"seconds": round(took, 3), "raw": str(raw), **hot_functions(raw)}
            print(f"py-spy {step}: {result[step]}", file=sys.stderr)
        for fmt in ("yaml", "json"):  # the client's side: `modelyard diff` of the fleet file, run under py-spy
            raw = out_dir / f"scale-diff-{fmt}.txt"
            fleet = stack.workdir / f"fleet.{fmt}"
            cli = [sys.executable, "-m", "gateway.cli", "diff", "-f", str(fleet), "--url", gw.url]
            cmd = [py_spy(), "record", "--rate", "200", "--format", "raw", "-o", str(raw), "--", *cli]
            took, proc = timed(
                lambda cmd=cmd: subprocess.run(
                    cmd, capture_output=True, timeout=1800, env=dict(os.environ, MODELYARD_ADMIN_TOKEN=stack.token)
                )
            )
            result[f"diff_{fmt}"] = {
                "seconds": round(took, 3),
                "exit": proc.returncode,
                "raw": str(raw),
                **hot_functions(raw),
            }
            print(f"py-spy diff {fmt}: {result[f'diff_{fmt}']}", file=sys.stderr)
    gw.stop()
    stack.gateways.remove(gw)
    return result


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


# ---------------------------------------------------------------------------------------------- warm


def check(ph: Phase, model: str, expected: list[float]) -> list[str]:
    errors: list[str] = []
    seen: dict[tuple[int, bytes], str | None] = {}
    for i, key in enumerate(zip(ph.status, ph.bodies, strict=True)):
        if key not in seen:
            seen[key] = answer_problem(key[0], key[1], model, expected)
        if seen[key] is not None:
            errors.append(f"{ph.target} request {i}: {seen[key]}")
    return errors


def answer_problem(status: int, body: bytes, model: str, expected: list[float]) -> str | None:
    if status != 200:
        return f"status {status}: {body[:300]!r}"
    try:
        outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
        got, name = outputs["OUTPUT0"]["data"], outputs["MODEL_NAME"]["data"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unexpected answer ({exc}): {body[:300]!r}"
    if got != expected or name != [model]:
        return f"answered {got} by {name}, expected {expected} by {model}"
    return None


async def measure_warm(
    targets: dict[str, Target], expected: dict[str, list[float]], args: argparse.Namespace
) -> tuple[dict[str, list[Phase]], list[dict[str, Any]]]:
    ours = sorted({os.getpid(), *(p for t in targets.values() for p in t.pids)})
    phases: dict[str, list[Phase]] = {s: [] for s in targets}
    rounds: list[dict[str, Any]] = []
    try:
        for size, t in targets.items():
            await t.pool.top_up(4)
            raise_on_errors(check(await run_phase(t, args.warmup, args.rate, ours), WARM[size], expected[size]))
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(targets)[::-1]
            summary: dict[str, Any] = {"round": r + 1, "order": order, "phases": {}}
            for size in order:
                t = targets[size]
                if args.quiet > 0:
                    await wait_for_quiet(ours, args.quiet, args.quiet_wait)
                await t.pool.top_up(4)
                if args.phase_warmup:
                    await run_phase(t, args.phase_warmup, args.rate, ours)
                ph = await run_phase(t, args.requests, args.rate, ours)
                raise_on_errors(check(ph, WARM[size], expected[size]))
                phases[size].append(ph)
                s = sorted(ph.latency_ms)
                summary["phases"][size] = {
                    "p50": round(percentile(s, 50), 3),
                    "p99": round(percentile(s, 99), 3),
                    "server_cpu_us_per_request": round(ph.server_cpu_s / len(s) * 1e6, 1),
                    "other_cpu_pct": round(ph.other_cpu_pct, 1),
                }
                print(f"round {r + 1}/{args.rounds} {size:<6} {summary['phases'][size]}", file=sys.stderr)
            rounds.append(summary)
    finally:
        for t in targets.values():
            t.pool.close()
        await asyncio.sleep(0.05)
    return phases, rounds


# ---------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelyard-scale-"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = loadavg()
    code = code_version()
    large = model_names(args.models)
    small = model_names(args.small)
    routes = route_specs(args.routes, large)
    out: dict[str, Any] = {"benchmark": "scale", "started": started, "machine": machine_info(), "code": code}
    with LocalStack(workdir, list(REAL), tritons=2) as stack:
        reg: dict[str, Any] = {"one_by_one": one_by_one(stack, args)}
        print(f"one by one: {reg['one_by_one']}", file=sys.stderr)
        for fmt in ("yaml", "json"):
            reg[f"apply_{fmt}"] = apply_fleet(stack, large, routes, fmt)
            print(f"apply {fmt}: {reg[f'apply_{fmt}']}", file=sys.stderr)
        gws = {"large": stack.add_gateway(prefix="scalelarge"), "small": stack.add_gateway(prefix="scalesmall")}
        reg["bulk"] = bulk(stack, gws["large"], large, routes)
        print(f"bulk: {reg['bulk']}", file=sys.stderr)
        reg["bulk_small"] = bulk(stack, gws["small"], small, [])
        out["registration"] = reg
        out["idle_cpu_pct"] = {s: idle_cpu(gws[s], args.idle) for s in SIZES}
        print(f"idle CPU %: {out['idle_cpu_pct']}", file=sys.stderr)
        body, expected1 = request_body(args.values)
        expected = {s: [x - 1.0 + int(WARM[s][1:]) for x in expected1] for s in SIZES}
        path = {s: f"/v2/models/{WARM[s]}/infer" for s in SIZES}
        with httpx.Client(timeout=180) as client:
            for s in SIZES:
                r = client.post(gws[s].url + path[s], content=body, headers={"content-type": "application/json"})
                problem = answer_problem(r.status_code, r.content, WARM[s], expected[s])
                if problem:
                    raise SystemExit(f"warming {WARM[s]} on the {s} gateway: {problem}")
        targets = {
            s: Target(s, gws[s].url, pool_for(gws[s].url), http_request(gws[s].url, path[s], body), [pid_of(gws[s])])
            for s in SIZES
        }
        phases, rounds = run_loop(measure_warm(targets, expected, args))
        out["warm"] = {s: summarize_phases(phases[s]) for s in SIZES}
        out["warm_rounds"] = rounds
        w = out["warm"]
        out["warm_large_over_small"] = {
            "p50": round(w["large"]["latency_ms"]["p50"] / w["small"]["latency_ms"]["p50"], 3),
            "p99": round(w["large"]["latency_ms"]["p99"] / w["small"]["latency_ms"]["p99"], 3),
            "cpu_per_request": round(
                w["large"]["server_cpu_us_per_request"] / w["small"]["server_cpu_us_per_request"], 3
            ),
        }
        out["placement_of_warm"] = {}
        for s in SIZES:
            with stack.admin(gws[s]) as admin:
                copies = admin.get(f"/admin/models/{WARM[s]}").raise_for_status().json()["copies"]
                out["placement_of_warm"][s] = [c["backend"] for c in copies]
        out["reads"] = {s: admin_reads(stack, gws[s], args.reads) for s in SIZES}
        print(f"reads: {json.dumps(out['reads'])}", file=sys.stderr)
        stack.stop_gateways()
        if args.py_spy is not None:
            out["profile"] = profile(stack, large, args.py_spy)
        out["starts"] = starts(stack, {"small": "scalesmall", "large": "scalelarge"}, args.starts)
        st = out["starts"]
        out["fresh_rss_per_model_bytes"] = round(
            (st["large"]["median_rss_bytes"] - st["small"]["median_rss_bytes"]) / (args.models - args.small)
        )
    out["loadavg_before"] = load_before
    out["loadavg_after"] = loadavg()
    out["setup"] = {
        k: getattr(args, k)
        for k in ("models", "routes", "small", "sample", "rate", "requests", "rounds", "warmup", "values", "reads")
    }
    return out


def report(r: dict[str, Any]) -> str:
    reg, w = r["registration"], r["warm"]
    lines = [
        f"registration of {r['setup']['models']} models and {r['setup']['routes']} routes:",
        f"  one by one: {reg['one_by_one']['per_model_ms']} ms per PUT ({reg['one_by_one']['sampled']} timed), "
        f"extrapolated {reg['one_by_one']['extrapolated_seconds_for_all']} s for all",
        f"  bulk PUT /admin/models: {reg['bulk']['seconds']} s; "
        f"routes one by one {reg['bulk']['routes_one_by_one_seconds']} s",
        *(f"  modelyard apply -f fleet.{f}: {reg[f'apply_{f}']['seconds']} s" for f in ("yaml", "json")),
        f"memory: {reg['bulk']['rss_per_model_bytes']} B RSS per model (registering gateway), "
        f"{r['fresh_rss_per_model_bytes']} B (fresh gateways)",
        f"start to ready: small {r['starts']['small']['median_seconds']} s, "
        f"large {r['starts']['large']['median_seconds']} s",
        f"idle CPU %: {r['idle_cpu_pct']}",
        "warm (ms, gateway CPU us/request):",
        *(
            f"  {s:<6} p50 {w[s]['latency_ms']['p50']:.3f} p99 {w[s]['latency_ms']['p99']:.3f} "
            f"cpu {w[s]['server_cpu_us_per_request']}"
            for s in SIZES
        ),
        f"  large / small: {r['warm_large_over_small']}",
        "admin reads (large):",
        *(f"  {k}: {v}" for k, v in r["reads"]["large"].items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
