"""Streaming through the gateway against Triton directly: first-event latency and gRPC stream throughput.

    .venv/bin/python -m loadtests.stream_bench [--requests 300] [--seconds 10] [--concurrency 8] [--rounds 2]

Starts a LocalStack (real redis-server, 1 Triton from the nvidia-pytriton wheel, 1 `modelyard serve`), registers
the backend and a Python-backend test model `m001`, warms it through the gateway, then, in `--rounds` rounds
alternating the order of the two targets (direct Triton, the gateway):
- first event: `--requests` sequential `POST /v2/models/m001/generate_stream` over one keep-alive connection;
  latency from sending the request to the first `data:` line of the server-sent events (median, p99);
- stream throughput: `--concurrency` gRPC `ModelStreamInfer` streams, each closed-loop (one request in flight
  per stream: write, read its response), for `--seconds`; responses per second, every answer checked.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc.aio
import httpx
import numpy as np
import tritonclient.grpc.service_pb2 as pb

from deploy.localstack.stack import LocalStack

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def first_event(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n):
            t0 = time.perf_counter()
            with c.stream("POST", "/v2/models/m001/generate_stream", json={"INPUT0": [float(i)]}) as r:
                assert r.status_code == 200, r.read()
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data:"):
                        out.append(time.perf_counter() - t0)
                        break
                for _ in lines:  # the rest of the stream, so the connection is reused
                    pass
    return out


def _request(i: int) -> bytes:
    req = pb.ModelInferRequest(model_name="m001", id=str(i))
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    del t
    req.raw_input_contents.append(np.array([float(i)], dtype=np.float32).tobytes())
    return req.SerializeToString()


async def stream_throughput(target: str, concurrency: int, seconds: float) -> float:
    async with grpc.aio.insecure_channel(target) as ch:
        done = 0
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            call = ch.stream_stream(METHOD)()
            i = w * 1_000_000
            while time.perf_counter() < end:
                await call.write(_request(i))
                raw = await call.read()
                resp = pb.ModelStreamInferResponse.FromString(raw)
                assert not resp.error_message, resp.error_message
                got = np.frombuffer(resp.infer_response.raw_output_contents[0], dtype=np.float32)[0]
                assert got == float(i) + 1, (got, i)
                done += 1
                i += 1
            await call.done_writing()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp), ["m000", "m001"], tritons=1) as stack:
        gw = stack.add_gateway()
        stack.register(capacity=4)
        httpx.post(
            f"{gw.url}/v2/models/m001/infer",
            timeout=120,
            json={"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        ).raise_for_status()
        triton = stack.tritons[0]
        targets = {"direct": (triton.url, triton.grpc_url), "gateway": (gw.url, gw.grpc_url)}
        first: dict[str, list[float]] = {k: [] for k in targets}
        rate: dict[str, list[float]] = {k: [] for k in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                http_url, grpc_url = targets[name]
                first[name] += first_event(http_url, args.requests)
                rate[name].append(asyncio.run(stream_throughput(grpc_url, args.concurrency, args.seconds)))
        print(
            f"commit {commit}; {args.rounds} rounds; first event over {args.requests} requests per round;"
            f" {args.concurrency} gRPC streams for {args.seconds:g} s per round"
        )
        for name in targets:
            lat = sorted(first[name])
            p99 = lat[int(0.99 * (len(lat) - 1))]
            print(
                f"{name:8s} first event p50 {statistics.median(lat) * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  "
                f"stream throughput {statistics.mean(rate[name]):.0f} responses/s  (rounds: "
                f"{', '.join(f'{x:.0f}' for x in rate[name])})"
            )


if __name__ == "__main__":
    main()
