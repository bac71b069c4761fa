"""A `generate_stream` or `ModelStreamInfer` client that stops reading while the model keeps producing: the
gateway's memory stays bounded (the relay stops reading the backend; Triton holds the rest), and nothing is lost
once the client reads again. Real Triton, real `modelyard serve`, a raw socket client and a raw gRPC stream.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
from tritonclient.grpc import service_pb2

from deploy.localstack.stack import LocalStack
from tests.gateway.conftest import StartGateway
from tests.waiting import eventually

MODEL = "flood"
EVENT_BYTES = 512 * 1024
EVENTS = 200  # 100 MiB of events
# What the gateway may grow by meanwhile: a few events in flight. (A relay that read ahead into a queue grew by
# 41 MiB here by the time the model was done.)
BOUND_MIB = 16
# Over gRPC the relay holds up to 16 responses (8 MiB here) besides grpc's own buffers; 400 responses (200 MiB) make
# a relay that reads ahead grow far past the bound.
GRPC_EVENTS = 400
GRPC_BOUND_MIB = 40
_CONFIG = """\
name: "flood"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
_MODEL_PY = """\
# INPUT0 = n: n responses of %(size)d bytes each, as fast as it can; then writes "done" to DONE.
import numpy as np
import triton_python_backend_utils as pb_utils

DONE = %(done)r


class TritonPythonModel:
    def execute(self, requests):
        chunk = np.array([b"x" * %(size)d], dtype=np.object_)
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().reshape(-1)[0])
            for _ in range(n):
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", chunk)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            with open(DONE, "w") as f:
                f.write("done")
        return None
"""


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _settled_growth(pid: int, before: float) -> float:
    """The gateway's RSS growth once it has stopped moving (ten samples 0.1 s apart within 1 MiB): a relay that
    reads ahead keeps growing after the model is done, so reading it at that moment could pass a buffering relay."""
    samples: list[float] = []

    def settled() -> bool:
        samples.append(_rss_mib(pid))
        recent = samples[-10:]
        return len(recent) == 10 and max(recent) - min(recent) < 1

    eventually(settled, "the gateway's memory to settle", timeout=120, interval=0.1)
    return samples[-1] - before


def _install_flood(stack: LocalStack, tmp_path: Path) -> Path:
    """Write the `flood` model into the stack's repository; returns the file it writes when it has sent all."""
    done = tmp_path / "done"
    (stack.repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    (stack.repo / MODEL / "config.pbtxt").write_text(_CONFIG)
    (stack.repo / MODEL / "1" / "model.py").write_text(_MODEL_PY % {"size": EVENT_BYTES, "done": str(done)})
    return done


def test_a_client_that_stops_reading_does_not_grow_the_gateway(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Path
) -> None:
    done = _install_flood(stack, tmp_path)
    gw = start_gateway()
    stack.register(capacity=4, models=[MODEL])
    # A first, small stream loads the model and warms the gateway's code paths.
    warm = httpx.post(f"{gw.url}/v2/models/{MODEL}/generate_stream", json={"INPUT0": [2]}, timeout=120)
    assert warm.status_code == 200 and warm.text.count("data:") == 2, warm.text[:200]
    eventually(done.exists, "the warm-up stream's model run to end")  # written after its last response, not before
    done.unlink()
    assert gw.proc is not None
    before = _rss_mib(gw.proc.pid)
    body = json.dumps({"INPUT0": [EVENTS]}).encode()
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))) as client:
        client.settimeout(60)
        head = f"POST /v2/models/{MODEL}/generate_stream HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        client.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = client.recv(1024)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        # The client reads nothing more while the model produces all of its 100 MiB...
        eventually(done.exists, "the model sent all its responses")
        grown = _settled_growth(gw.proc.pid, before)
        assert grown < BOUND_MIB, f"the gateway grew by {grown:.0f} MiB"
        # ... and then reads every event: held back, not dropped.
        tail = b""
        events = received.count(b"data:")
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            chunk = client.recv(1 << 20)
            assert chunk, "the gateway closed the stream early"
            events += (tail[-4:] + chunk).count(b"data:")
            tail = (tail + chunk)[-16:]
        assert events == EVENTS


def test_a_stream_infer_client_that_stops_reading_does_not_grow_the_gateway(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """The same over gRPC `ModelStreamInfer`: the relay's queue is bounded, so it stops reading Triton's stream and
    HTTP/2 flow control holds the rest back (before the bound, the gateway grew by about 200 MiB here)."""
    done = _install_flood(stack, tmp_path)
    gw = start_gateway()
    stack.register(capacity=4, models=[MODEL])

    def request(n: int) -> bytes:
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
        req.raw_input_contents.append(struct.pack("<f", float(n)))
        return bytes(req.SerializeToString())

    with grpc.insecure_channel(gw.grpc_url) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        warm = list(stream(iter([request(2)]), timeout=120))  # loads the model, warms the code paths
        answers = [service_pb2.ModelStreamInferResponse.FromString(m) for m in warm]
        assert [a.error_message for a in answers if a.error_message] == []
        assert sum(1 for a in answers if a.infer_response.raw_output_contents) == 2
        eventually(done.exists, "the warm-up stream's model run to end")
        done.unlink()
        assert gw.proc is not None
        before = _rss_mib(gw.proc.pid)
        sent = threading.Event()

        def one_request() -> Iterator[bytes]:
            yield request(GRPC_EVENTS)
            sent.wait(120)  # the request side stays open: the client is still there, it just does not read

        responses = stream(one_request(), timeout=300)
        # The client reads nothing while the model produces all of its 100 MiB...
        eventually(done.exists, "the model sent all its responses")
        grown = _settled_growth(gw.proc.pid, before)
        sent.set()
        assert grown < GRPC_BOUND_MIB, f"the gateway grew by {grown:.0f} MiB"
        # ... and then reads every response: held back, not dropped.
        received = 0
        for message in responses:
            answer = service_pb2.ModelStreamInferResponse.FromString(message)
            assert not answer.error_message, answer.error_message
            if answer.infer_response.raw_output_contents:
                received += 1
        assert received == GRPC_EVENTS
