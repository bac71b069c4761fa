"""What reading the model name out of a KServe gRPC request costs: the generated class vs a top-level scan.

    .venv/bin/python -m loadtests.grpc_parse_cost [--repeat 2000]

The gRPC data plane needs `model_name` (field 1) and `model_version` (field 2) of each request, and, for
routes, to replace field 1. Two ways are measured on the same bytes, for requests built with tritonclient's
own messages (FP32 tensors in `raw_input_contents`, as `tritonclient.grpc` sends them):
- `pb2`: `tritonclient.grpc.service_pb2.ModelInferRequest.FromString(raw)` (protobuf's upb runtime), then
  the two fields; for the rewrite, set the field and `SerializeToString()`;
- `scan`: `adapters.protowire.string_fields(raw, (1, 2))`, which skips every length-delimited field by its
  length; for the rewrite, `adapters.protowire.replace_string`.
Times are the median of `--repeat` calls (after warm-up), in microseconds, on this machine as it is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import tritonclient.grpc.service_pb2 as pb

from adapters.protowire import replace_string, string_fields


def request(values: int, inputs: int = 1) -> bytes:
    req = pb.ModelInferRequest(model_name="m001", model_version="1", id="req-1")
    for k in range(inputs):
        t = req.inputs.add()
        t.name = f"INPUT{k}"
        t.datatype = "FP32"
        t.shape.append(values)
        req.raw_input_contents.append(np.arange(values, dtype=np.float32).tobytes())
    req.outputs.add().name = "OUTPUT0"
    return req.SerializeToString()


def median_us(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(min(repeat, 50)):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def pb2_read(raw: bytes) -> tuple[str, str]:
    m = pb.ModelInferRequest.FromString(raw)
    return m.model_name, m.model_version


def scan_read(raw: bytes) -> tuple[str, str]:
    found, _ = string_fields(raw, (1, 2))
    return found.get(1, ""), found.get(2, "")


def pb2_rewrite(raw: bytes) -> bytes:
    m = pb.ModelInferRequest.FromString(raw)
    m.model_name = "m002"
    return m.SerializeToString()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.grpc_parse_cost", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=2000)
    args = p.parse_args(argv)
    cases = [(16, 1), (4096, 1), (262_144, 1), (4_194_304, 1), (16, 64)]
    print(f"{'request':<32}{'bytes':>12}{'pb2 read':>12}{'scan read':>12}{'pb2 rewrite':>14}{'scan rewrite':>14}")
    for values, inputs in cases:
        raw = request(values, inputs)
        assert pb2_read(raw) == scan_read(raw) == ("m001", "1")
        assert pb.ModelInferRequest.FromString(replace_string(raw, 1, "m002")).model_name == "m002"
        repeat = args.repeat if len(raw) < 1 << 20 else max(20, args.repeat // 50)
        row = [
            median_us(lambda raw=raw: pb2_read(raw), repeat),
            median_us(lambda raw=raw: scan_read(raw), repeat),
            median_us(lambda raw=raw: pb2_rewrite(raw), repeat),
            median_us(lambda raw=raw: replace_string(raw, 1, "m002"), repeat),
        ]
        label = f"{inputs} x {values} FP32 (raw contents)"
        print(
            f"{label:<32}{len(raw):>12}"
            + "".join(f"{x:>12.1f} us" if i == 0 else f"{x:>10.1f} us" for i, x in enumerate(row))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
