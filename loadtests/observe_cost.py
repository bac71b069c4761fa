"""What observing one warm request costs the gateway: metrics (and spans, with tracing on), no I/O.

    .venv/bin/python -m loadtests.observe_cost [--requests 200000]

Runs the calls the data plane makes for one warm HTTP request (`Observer.begin`, `resolved`, `hit`,
`backend_call`, `end`) in a loop, against a fresh registry, and prints the mean per request in microseconds:
- `metrics`: tracing off, the default (five metric updates: requests, request latency, placement hit, backend
  call latency and outcome);
- `metrics+traces`: tracing on, spans kept by a no-op processor (what the SDK costs before export).
On this machine as it is (2 shared cores); compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.observe import Observer
from gateway.tracing import Tracing

HEADERS = [(b"content-type", b"application/json"), (b"host", b"gateway")]
FORWARDED = [("content-type", "application/json")]


def per_request(obs: Observer, n: int) -> float:
    def one() -> None:
        req = obs.begin("http", HEADERS)
        obs.resolved("m001", "m001")
        obs.hit("m001", "triton-0")
        with obs.backend_call("kserve", "infer", "m001", "triton-0", FORWARDED) as sent:
            sent.status = 200
        req.backend = "triton-0"
        obs.end(req, "infer", "200", None, "POST /v2/models/{name}/infer" if req.span is not None else "")

    for _ in range(min(n, 1000)):
        one()
    started = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - started) / n * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    off = per_request(Observer(Metrics(CollectorRegistry())), args.requests)
    on = per_request(Observer(Metrics(CollectorRegistry()), Tracing(TracerProvider())), args.requests // 10)
    print(f"metrics          {off:7.2f} us per request")
    print(f"metrics+traces   {on:7.2f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
