"""Protocol parity with Triton, through two real `modelyard serve` processes sharing Redis, with stock clients:
gRPC streaming of a decoupled model (each response relayed as it is produced) and sequence affinity of a
stateful model that has a copy on each of the two Tritons.

The two protocol models are written into the session stack's repository here (Triton reads a model's files
when it loads it), so the stack's own model list stays as other tests count it.
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from deploy.localstack.models import write_decoupled_model, write_sequence_model
from deploy.localstack.stack import LocalStack
from tests.gateway.conftest import StartGateway

DECOUPLED = "dec"
SEQUENCE = "seqsum"


@pytest.fixture
def gates(stack: LocalStack, tmp_path: Path) -> Iterator[Path]:
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    write_decoupled_model(stack.repo, DECOUPLED, gate_dir)  # the gate dir is this test's own
    write_sequence_model(stack.repo, SEQUENCE)
    yield gate_dir


def _input(value: float, module: object = triton_grpc) -> object:
    tensor = module.InferInput("INPUT0", [1], "FP32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.array([value], dtype=np.float32))
    return tensor


def _index(url: str, ready: bool) -> list[Any]:
    """`RepositoryIndex` with its `ready` field (which tritonclient's client doesn't send), through its stub."""
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return list(stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=ready)).models)


def test_stream_infer_relays_each_decoupled_response_as_it_is_produced(
    stack: LocalStack, start_gateway: StartGateway, gates: Path
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=[DECOUPLED, "m001"])
    results: queue.Queue[tuple[object, object]] = queue.Queue()

    def next_result() -> tuple[object, object]:
        return results.get(timeout=60)

    client = triton_grpc.InferenceServerClient(gw.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        # The model is cold: the stream waits for its load, then the first response comes...
        client.async_stream_infer(DECOUPLED, [_input(3.0)], request_id="r1", enable_empty_final_response=True)
        values = []
        for i in range(3):
            result, error = next_result()
            assert error is None, error
            values.append(float(result.as_numpy("OUTPUT0")[0]))  # type: ignore[attr-defined]
            # ... and response i+1 is produced only now: had the gateway held response i back, it would not be here.
            (gates / f"r1.{i + 1}").touch()
        assert values == [0.0, 1.0, 2.0]
        result, error = next_result()
        assert error is None
        final = result.get_response()  # type: ignore[attr-defined]
        assert final.parameters["triton_final_response"].bool_param and not final.outputs
        # On the same stream: a plain model, and a name the gateway doesn't know (an error in the stream,
        # which goes on).
        client.async_stream_infer("nope", [_input(1.0)], request_id="r2")
        result, error = next_result()
        assert result is None and isinstance(error, InferenceServerException) and "nope" in str(error)
        plain = triton_grpc.InferInput("INPUT0", [2], "FP32")
        plain.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        client.async_stream_infer("m001", [plain], request_id="r3")
        result, error = next_result()
        assert error is None and result.as_numpy("OUTPUT0").tolist() == [2.0, 3.0]  # type: ignore[attr-defined]
    finally:
        client.stop_stream()
        client.close()
    # The client's deadline reaches the stream: a response that never comes ends it with DEADLINE_EXCEEDED.
    late = triton_grpc.InferenceServerClient(gw.grpc_url)
    late.start_stream(callback=lambda result, error: results.put((result, error)), stream_timeout=3.0)
    try:
        late.async_stream_infer(DECOUPLED, [_input(2.0)], request_id="late")
        result, error = next_result()
        assert error is None and float(result.as_numpy("OUTPUT0")[0]) == 0.0  # type: ignore[attr-defined]
        result, error = next_result()
        assert result is None and isinstance(error, InferenceServerException)
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
    finally:
        (gates / "late.1").touch()  # frees the model's instance
        late.stop_stream()
        late.close()
    # The generate extension over HTTP: each server-sent event is relayed as it is produced, as above.
    with httpx.Client(base_url=gw.url, timeout=60) as http:
        with http.stream("POST", f"/v2/models/{DECOUPLED}/generate_stream", json={"INPUT0": [3.0]}) as events:
            assert events.status_code == 200 and events.headers["x-modelyard-backend"].startswith("triton-")
            assert events.headers["content-type"].startswith("text/event-stream")
            got = []
            for line in events.iter_lines():
                if line.startswith("data:"):
                    got.append(json.loads(line[5:])["OUTPUT0"])
                    (gates / f".{len(got)}").touch()  # a request without an id gates on ".<i>"
        assert got == [0.0, 1.0, 2.0]
        answer = http.post("/v2/models/m001/generate", json={"INPUT0": [1.0, 2.0]})
        assert answer.status_code == 200 and answer.json()["OUTPUT0"] == [2.0, 3.0], answer.text
        missing = http.post("/v2/models/nope/generate_stream", json={"INPUT0": [1.0]})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_sequences_stay_on_the_copy_that_took_their_start_across_gateways(
    stack: LocalStack, start_gateway: StartGateway, gates: Path
) -> None:
    gateways = [start_gateway(), start_gateway()]
    stack.register(capacity=4, models=[SEQUENCE, "m002"], extra={SEQUENCE: {"min_copies": 2, "max_copies": 2}})
    with stack.admin(gateways[0]) as admin:
        loaded = admin.post(f"/admin/models/{SEQUENCE}/load")
        assert loaded.status_code == 200, loaded.text
        copies = loaded.json()["copies"]
        assert sorted(c["backend"] for c in copies if c["state"] == "ready") == ["triton-0", "triton-1"]
    http = [triton_http.InferenceServerClient(gw.url.removeprefix("http://")) for gw in gateways]
    grpc = [triton_grpc.InferenceServerClient(gw.grpc_url) for gw in gateways]
    run = uuid.uuid4().int % 1_000_000 * 100
    steps = [1.0, 2.0, 4.0, 8.0]
    servers: dict[str, set[str]] = {}
    try:
        # 16 sequences (one at a time: the model has one sequence slot per copy); each step of a sequence goes
        # through another gateway than the step before.
        ids: list[int | str] = [run + i for i in range(1, 9)] + [f"s{run}-{i}" for i in range(8)]
        for n, seq in enumerate(ids):
            clients = http if isinstance(seq, int) else grpc
            module = triton_http if isinstance(seq, int) else triton_grpc
            for k, value in enumerate(steps):
                result = clients[(n + k) % 2].infer(
                    SEQUENCE,
                    [_input(value, module)],  # type: ignore[list-item]
                    sequence_id=seq,
                    sequence_start=k == 0,
                    sequence_end=k == len(steps) - 1,
                )
                assert float(result.as_numpy("OUTPUT0")[0]) == sum(steps[: k + 1]), f"sequence {seq} step {k}"
                servers.setdefault(str(seq), set()).add(result.as_numpy("SERVER")[0].decode())
        assert all(len(s) == 1 for s in servers.values()), servers
        # Both copies took sequences (all 16 on one copy: 2 in 65536 if the hash spreads them).
        assert set().union(*servers.values()) == {"triton-0", "triton-1"}
        # The gateway as one Triton: its repository index, and statistics of all models merged over both copies.
        want = [{"name": "m002", "state": "UNAVAILABLE"}, {"name": SEQUENCE, "state": "READY"}]
        over_grpc = grpc[0].get_model_repository_index(as_json=True)["models"]
        for index in (http[1].get_model_repository_index(), over_grpc):
            assert [{k: e[k] for k in ("name", "state")} for e in index] == want
            assert "loads it on its first request" in index[0]["reason"]
        # (Other registered models may be listed too: Triton keeps statistics of models loaded earlier. Triton
        # counts a request just after answering it: wait for the last one.)
        total = len(ids) * len(steps)
        deadline = time.monotonic() + 30
        while True:
            stats = {s["name"]: s for s in http[0].get_inference_statistics()["model_stats"]}
            if stats[SEQUENCE]["inference_count"] >= total or time.monotonic() > deadline:
                break
        assert stats[SEQUENCE]["inference_count"] == total, stats
        assert stats[SEQUENCE]["inference_stats"]["success"]["count"] == total
        # gRPC's statistics of all models (no model name) are the same merge, and each Triton's own adds up to it.
        merged = {s.name: s for s in grpc[1].get_inference_statistics().model_stats}
        assert merged[SEQUENCE].inference_count == total and merged[SEQUENCE].execution_count == total
        assert merged[SEQUENCE].inference_stats.success.count == total and merged[SEQUENCE].last_inference > 0
        direct = [triton_grpc.InferenceServerClient(t.grpc_url) for t in stack.tritons]
        try:
            each = [c.get_inference_statistics(SEQUENCE).model_stats[0] for c in direct]
            assert sum(s.inference_count for s in each) == total and all(s.inference_count > 0 for s in each)
            assert merged[SEQUENCE].inference_stats.success.ns == sum(s.inference_stats.success.ns for s in each)
            # The index's `ready` filter, as Triton honours it (the stock clients don't send it: raw HTTP, and
            # tritonclient's own gRPC stub): only READY models.
            for t in stack.tritons:
                assert {m.state for m in _index(t.grpc_url, ready=True)} == {"READY"}
        finally:
            for c in direct:
                c.close()
        assert [m.name for m in _index(gateways[1].grpc_url, ready=True)] == [SEQUENCE]
        assert [m.name for m in _index(gateways[1].grpc_url, ready=False)] == ["m002", SEQUENCE]
        ready_http = httpx.post(gateways[1].url + "/v2/repository/index", json={"ready": True}).json()
        assert ready_http == [{"name": SEQUENCE, "state": "READY"}]
        # A sequence over a stream (`stream_infer`) through one gateway, ended by a plain request through the other.
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        grpc[0].start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for k, value in enumerate(steps[:3]):
                grpc[0].async_stream_infer(SEQUENCE, [_input(value)], sequence_id=run + 99, sequence_start=k == 0)
                result, error = answers.get(timeout=60)
                assert error is None and float(result.as_numpy("OUTPUT0")[0]) == sum(steps[: k + 1]), error
                servers.setdefault("stream", set()).add(result.as_numpy("SERVER")[0].decode())
        finally:
            grpc[0].stop_stream()
        last = http[1].infer(SEQUENCE, [_input(steps[3], triton_http)], sequence_id=run + 99, sequence_end=True)
        assert float(last.as_numpy("OUTPUT0")[0]) == sum(steps)
        assert servers["stream"] == {last.as_numpy("SERVER")[0].decode()}
        # Server metadata lists exactly the extensions that work through the gateway (the contract's list), over
        # both protocols, each one a Triton directly lists too, but `generate`: Triton 2.51 serves the generate
        # endpoints without listing them.
        extensions = http[0].get_server_metadata()["extensions"]
        assert extensions == list(grpc[1].get_server_metadata().extensions)
        assert set(extensions) == {
            *("classification", "sequence", "model_configuration", "schedule_policy"),
            *("binary_tensor_data", "parameters", "statistics", "generate"),
        }
        direct_http = triton_http.InferenceServerClient(stack.tritons[0].url.removeprefix("http://"))
        try:
            assert set(extensions) - {"generate"} <= set(direct_http.get_server_metadata()["extensions"])
        finally:
            direct_http.close()
    finally:
        for c in [*http, *grpc]:
            c.close()
    for path, why in (("/v2/systemsharedmemory/status", "shared-memory"), ("/v2/logging", "log settings")):
        refused = httpx.get(gateways[0].url + path)
        assert refused.status_code == 501 and why in refused.json()["error"]
    # The same through the stock client: each refusal says why (directly, a Triton answers them for itself).
    client = triton_http.InferenceServerClient(gateways[0].url.removeprefix("http://"))
    try:
        for ask, why in (
            (client.get_system_shared_memory_status, "shared-memory"),
            (client.get_log_settings, "log settings"),
            (client.get_trace_settings, "trace settings"),
            (lambda: client.get_trace_settings(model_name=SEQUENCE), "trace settings"),
        ):
            with pytest.raises(InferenceServerException, match=why):
                ask()
    finally:
        client.close()
