"""NVIDIA's perf_analyzer against Triton directly, nginx in front of it, and the gateway, in one run.

    make bench-perf-analyzer ARGS='--rounds 3 --json docs/benchmarks/perf-analyzer-1.json'
    .venv/bin/python -m loadtests.perf_analyzer [--rounds 3] [--concurrency 1 8] [--interval-ms 3000]

The third-party view of the gateway's overhead (issue 12): perf_analyzer is the load generator Triton users know.
It comes from the manylinux wheel of tritonclient==2.34.0 (newer wheels don't ship it), installed by
`make bench-perf-analyzer` in a venv of its own at loadtests/.perf-venv (not the project's dependencies), with
libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH and Debian's libb64-0d; nginx 1.22 is
Debian's (`/usr/sbin/nginx`), one worker process, HTTP/1.1 keep-alive upstream and `grpc_pass` for gRPC.

One LocalStack (a real redis-server, one Triton from the nvidia-pytriton wheel, one `modelyard serve`; all on
127.0.0.1); model m001 warm (INPUT0 of `--values` FP32). For each round, in rotating order of the targets, every
(target, protocol, concurrency) is measured by one perf_analyzer run (closed loop, `--concurrency-range N`);
figures are the medians over rounds of throughput and p50/p99 latency. The machine is shared and busy: compare
within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
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

from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import free_port
from loadtests.harness import code_version, descendants, emit, loadavg, processes_user_sys_s, run_header

PERF_VENV = Path(__file__).resolve().parent / ".perf-venv"
MODEL = "m001"
TARGETS = ("direct", "nginx", "gateway", "gateway-threads", "proto-sync", "baseline")
PROTOCOLS = ("http", "grpc")

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream triton_http {{ server {http}; keepalive 64; }}
    upstream triton_grpc {{ server {grpc}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{http_port};
        location / {{
            proxy_pass http://triton_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{grpc_port} http2;
        location / {{ grpc_pass grpc://triton_grpc; }}
    }}
}}
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests.perf_analyzer", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; each measures every target, protocol, concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="perf_analyzer concurrency levels")
    p.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer --measurement-interval")
    p.add_argument("--values", type=int, default=16, help="FP32 values in INPUT0")
    p.add_argument("--perf-analyzer", type=Path, default=PERF_VENV / "bin" / "perf_analyzer")
    p.add_argument("--nginx", type=Path, default=Path("/usr/sbin/nginx"), help="nginx binary ('' to skip nginx)")
    p.add_argument(
        "--grpc-server",
        choices=("aio", "threads"),
        nargs="+",
        default=["aio"],
        help="the gateway's --grpc-server; with both, 'gateway' runs aio and 'gateway-threads' threads",
    )
    p.add_argument(
        "--prototype-sync",
        action="store_true",
        help="gRPC only: also measure loadtests.prototypes.grpc_forward --mode sync (raw-bytes forwarder, no gateway)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here as JSON")
    p.add_argument("--workdir", type=Path, default=None, help="keep the stack's files and logs here")
    p.add_argument(
        "--protocols", "--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS), help="measure only these"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also measure a second gateway run from this checkout (e.g. `git archive REV | tar -x -C DIR`), "
        "beside the first on the same Redis and Triton: an A/B in one run",
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or any(c < 1 for c in args.concurrency) or args.interval_ms < 100:
        p.error("--rounds, --concurrency must be positive, --interval-ms at least 100")
    return args


def cuda_runtime_lib() -> Path:
    found = sorted(PERF_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not found:
        raise SystemExit(f"no nvidia-cuda-runtime-cu12 in {PERF_VENV}: run `make bench-perf-analyzer`")
    return found[0]


def start_nginx(
    nginx: Path, workdir: Path, triton_http: str, triton_grpc: str
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    d = workdir / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    ports = {"http": free_port(), "grpc": free_port()}
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(dir=d, http=triton_http, grpc=triton_grpc, http_port=ports["http"], grpc_port=ports["grpc"])
    )
    log = open(d / "nginx.out", "ab")
    proc = subprocess.Popen([str(nginx), "-p", str(d), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nginx did not come up: {(d / 'nginx-error.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, {p: f"127.0.0.1:{port}" for p, port in ports.items()}


def served(triton_url: str) -> int:
    """Inferences Triton has answered for the model so far (all targets' requests reach the one Triton)."""
    stats = httpx.get(f"{triton_url}/v2/models/{MODEL}/stats", timeout=10).json()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def run_perf(
    args: argparse.Namespace,
    url: str,
    protocol: str,
    concurrency: int,
    env: dict[str, str],
    cpu: tuple[str, list[int]] | None = None,
) -> dict[str, Any]:
    """One perf_analyzer run. `cpu`: (Triton's URL, pids of the target's processes), to report their CPU per
    inference over the whole run, the figure that holds best on a busy machine (throughput depends on what else
    gets the cores)."""
    if cpu is not None:
        before = (processes_user_sys_s(cpu[1]), served(cpu[0]))
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as f:
        csv_path = Path(f.name)
    cmd = [
        str(args.perf_analyzer),
        "-m",
        MODEL,
        "-u",
        url,
        "-i",
        protocol,
        "--shape",
        f"INPUT0:{args.values}",
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        str(args.interval_ms),
        # generous: on these busy machines a tighter setting gives up (/work/shared/NOTES.md); the CSV has
        # p50/p90/p95/p99 whatever stability is judged on (throughput and mean latency here)
        "--stability-percentage",
        "100",
        "--max-trials",
        "10",
        "-f",
        str(csv_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    try:
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text()))) if proc.returncode == 0 else []
    finally:
        csv_path.unlink(missing_ok=True)
    if proc.returncode != 0 or not rows:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    row = rows[0]
    result = {
        "throughput": round(float(row["Inferences/Second"]), 1),
        "p50_ms": round(float(row["p50 latency"]) / 1000, 3),
        "p99_ms": round(float(row["p99 latency"]) / 1000, 3),
    }
    if cpu is not None:
        n = max(1, served(cpu[0]) - before[1])
        user, system = processes_user_sys_s(cpu[1])
        result["cpu_us"] = round(1e6 * (user + system - sum(before[0])) / n, 1)
        result["sys_us"] = round(1e6 * (system - before[0][1]) / n, 1)  # of which in the kernel
    return result


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.perf_analyzer.exists():
        raise SystemExit(f"{args.perf_analyzer} missing: run `make bench-perf-analyzer`")
    env = dict(os.environ, LD_LIBRARY_PATH=f"{cuda_runtime_lib()}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelyard-perf-"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = loadavg()
    code = code_version()
    use_nginx = str(args.nginx) not in ("", ".") and shutil.which(str(args.nginx)) is not None
    servers = args.grpc_server
    targets = [
        t
        for t in TARGETS
        if (t != "nginx" or use_nginx)
        and (t != "gateway" or servers != ["threads"])
        and (t != "gateway-threads" or "threads" in servers)
        and (t != "proto-sync" or args.prototype_sync)
        and (t != "baseline" or args.baseline)
    ]
    runs: list[dict[str, Any]] = []
    nginx = None
    with LocalStack(workdir, ["m000", MODEL], tritons=1) as stack:
        gw = stack.add_gateway(extra=["--grpc-server", servers[0]])
        base = None
        if args.baseline is not None:
            # `python -m gateway.cli` imports from its working directory first: the other checkout's code.
            with contextlib.chdir(args.baseline):
                base = stack.add_gateway()
        stack.register(capacity=2)
        with stack.admin(gw) as admin:
            admin.post(f"/admin/models/{MODEL}/load").raise_for_status()
        t = stack.tritons[0]
        urls = {
            "direct": {"http": t.url.split("://", 1)[1], "grpc": t.grpc_url},
            "gateway": {"http": gw.url.split("://", 1)[1], "grpc": gw.grpc_url},
        }
        gwt = None
        if len(servers) > 1:  # a second gateway on the same Redis state, with --grpc-server threads
            gwt = stack.add_gateway(extra=["--grpc-server", "threads"])
            urls["gateway-threads"] = {"http": gwt.url.split("://", 1)[1], "grpc": gwt.grpc_url}
        elif servers == ["threads"]:
            urls["gateway-threads"] = urls.pop("gateway")
        proto = None
        if args.prototype_sync:
            from loadtests.grpc_overhead import start_prototype

            proto, address = start_prototype("sync", t.grpc_url, workdir)
            urls["proto-sync"] = {"grpc": address}
        if base is not None:
            urls["baseline"] = {"http": base.url.split("://", 1)[1], "grpc": base.grpc_url}
        try:
            if use_nginx:
                nginx, urls["nginx"] = start_nginx(args.nginx, workdir, urls["direct"]["http"], urls["direct"]["grpc"])
            # Whose CPU each target costs: the proxy's process(es); for direct, Triton's (its stubs included).
            pids = {"direct": descendants(t.pid), "nginx": descendants(nginx.pid) if nginx is not None else []}
            gateways = (("gateway", gw), ("gateway-threads", gwt or gw), ("baseline", base))
            pids |= {name: [g.proc.pid] for name, g in gateways if g and g.proc}
            if proto is not None:
                pids["proto-sync"] = [proto.pid]
            for r in range(args.rounds):
                order = targets[r % len(targets) :] + targets[: r % len(targets)]
                for target in order:
                    for protocol in args.protocols:
                        if protocol not in urls[target]:
                            continue
                        for c in args.concurrency:
                            res = run_perf(args, urls[target][protocol], protocol, c, env, (t.url, pids[target]))
                            runs.append(
                                {"round": r + 1, "target": target, "protocol": protocol, "concurrency": c, **res}
                            )
                            print(f"round {r + 1} {target:<8} {protocol:<5} c={c}: {res}", file=sys.stderr)
        finally:
            for proc in (nginx, proto):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    table: dict[str, Any] = {}
    for protocol in args.protocols:
        for c in args.concurrency:
            row: dict[str, Any] = {}
            for target in targets:
                ok = [x for x in runs if (x["target"], x["protocol"], x["concurrency"]) == (target, protocol, c)]
                ok = [x for x in ok if "error" not in x]
                if ok:
                    keys = ("throughput", "p50_ms", "p99_ms", "cpu_us", "sys_us")
                    row[target] = {k: round(median([x[k] for x in ok if k in x]), 3) for k in keys if k in ok[0]}
                    row[target]["runs"] = len(ok)
            for gw_name in ("gateway", "gateway-threads", "baseline"):
                if gw_name in row and "nginx" in row:
                    row[f"{gw_name}_over_nginx"] = round(row[gw_name]["throughput"] / row["nginx"]["throughput"], 2)
                if gw_name in row and "direct" in row:
                    row[f"{gw_name}_added_p50_ms"] = round(row[gw_name]["p50_ms"] - row["direct"]["p50_ms"], 3)
            if "baseline" in row and "gateway" in row:
                row["gateway_over_baseline"] = round(row["gateway"]["throughput"] / row["baseline"]["throughput"], 2)
            table[f"{protocol} c={c}"] = row
    return {
        **run_header("perf_analyzer", started, code, load_before),
        "setup": {
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "interval_ms": args.interval_ms,
            "values": args.values,
            "perf_analyzer": "tritonclient==2.34.0 wheel",
            "nginx": "Debian nginx, worker_processes 1" if use_nginx else None,
            "protocols": args.protocols,
            "grpc_servers": servers,
            "baseline": str(args.baseline) if args.baseline else None,
        },
        "table": table,
        "runs": runs,
    }


def report(result: dict[str, Any]) -> str:
    lines = ["perf_analyzer medians (inferences/s, p50 ms/p99 ms, CPU us of the target's processes per inference):"]
    for key, row in result["table"].items():
        cells = "  ".join(
            f"{t} {row[t]['throughput']:.0f}/s {row[t]['p50_ms']:.2f}/{row[t]['p99_ms']:.2f}"
            f" {row[t].get('cpu_us', 0):.0f}us"
            for t in TARGETS
            if t in row
        )
        extra = "".join(
            f"  {g}/nginx {row[f'{g}_over_nginx']}"
            for g in ("gateway", "gateway-threads", "baseline")
            if f"{g}_over_nginx" in row
        )
        if "gateway_over_baseline" in row:
            extra += f"  gateway/baseline {row['gateway_over_baseline']}"
        lines.append(f"  {key:<10} {cells}{extra}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
