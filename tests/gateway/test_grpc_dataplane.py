"""The gRPC data plane (KServe v2, `inference.GRPCInferenceService`) of real `modelyard serve` processes, in front
of two real Triton servers and a real Redis: `tritonclient.grpc` unchanged, and raw gRPC calls where the test
needs the response metadata or the exact status.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.service_pb2 as pb
from tritonclient.utils import InferenceServerException

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import TOKEN, StartGateway, check_answer, infer_body, offset
from tests.metrics_text import samples, total
from tests.waiting import eventually

SERVICE = "/inference.GRPCInferenceService/"


def infer_request(name: str, values: list[float], version: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name, model_version=version)
    tensor = req.inputs.add()
    tensor.name = "INPUT0"
    tensor.datatype = "FP32"
    tensor.shape.append(len(values))
    req.raw_input_contents.append(np.array(values, dtype=np.float32).tobytes())
    return req


def outputs(resp: pb.ModelInferResponse) -> dict[str, object]:
    """OUTPUT0 as floats and MODEL_NAME as str, from the raw output contents."""
    got: dict[str, object] = {}
    for out, raw in zip(resp.outputs, resp.raw_output_contents, strict=True):
        if out.name == "OUTPUT0":
            got["OUTPUT0"] = np.frombuffer(raw, dtype=np.float32).tolist()
        elif out.name == "MODEL_NAME":
            got["MODEL_NAME"] = raw[4:].decode()  # BYTES: a 4-byte length, then the string
    return got


@contextmanager
def channel(gw: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.grpc_url) as ch:
        yield ch


def rpc(
    ch: grpc.Channel, method: str, request: object, response: type, **kwargs: object
) -> tuple[object, dict[str, str]]:
    """One raw unary call; returns the parsed response and the initial metadata as a dict."""
    call = ch.unary_unary(
        SERVICE + method,
        request_serializer=type(request).SerializeToString,  # type: ignore[attr-defined]
        response_deserializer=response.FromString,
    )  # type: ignore[attr-defined]
    resp, info = call.with_call(request, **kwargs)
    return resp, dict(info.initial_metadata())


def rpc_error(ch: grpc.Channel, method: str, request: object, **kwargs: object) -> grpc.RpcError:
    call = ch.unary_unary(SERVICE + method, request_serializer=type(request).SerializeToString)  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, **kwargs)
    return caught.value


def test_tritonclient_grpc_works_unchanged_through_the_gateway(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m020", "m021"])
    client = triton_grpc.InferenceServerClient(gw.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "modelyard" and "binary_tensor_data" in meta.extensions
    assert client.is_model_ready("m021")  # registered and placeable, though not loaded yet
    assert new_loads() == []  # readiness did not load it

    x = np.arange(5, dtype=np.float32)
    inp = triton_grpc.InferInput("INPUT0", [5], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("m021", [inp])  # cold: loads it
    assert result.as_numpy("OUTPUT0").tolist() == (x + offset("m021")).tolist()
    assert result.as_numpy("MODEL_NAME").tolist() == [b"m021"]
    result = client.infer("m021", [inp], model_version="1", request_id="r-7")  # warm, with a version and an id
    assert result.as_numpy("OUTPUT0").tolist() == (x + offset("m021")).tolist()
    assert result.get_response().id == "r-7"
    result = client.infer("m020", [inp])  # another model answers as itself
    assert result.as_numpy("MODEL_NAME").tolist() == [b"m020"]

    model_meta = client.get_model_metadata("m021")
    assert model_meta.name == "m021" and [i.name for i in model_meta.inputs] == ["INPUT0"]
    assert client.get_model_config("m021").config.name == "m021"
    stats = client.get_inference_statistics("m021")
    assert [s.name for s in stats.model_stats] == ["m021"] and stats.model_stats[0].inference_count >= 2
    assert client.is_model_ready("m021") and client.is_model_ready("m021", "1")  # forwarded to Triton now
    assert sorted(new_loads()) == ["m020", "m021"]

    with pytest.raises(InferenceServerException) as unknown:
        client.infer("unknown-model", [inp])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "no model or route named 'unknown-model' is registered; register it" in unknown.value.message()
    with pytest.raises(InferenceServerException) as unknown_ready:
        client.is_model_ready("unknown-model")
    assert unknown_ready.value.status() == "StatusCode.NOT_FOUND"
    # Triton's own errors pass through with their code and words.
    wrong = triton_grpc.InferInput("X", [5], "FP32")
    wrong.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as bad_input:
        client.infer("m021", [wrong])
    assert bad_input.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad_input.value.message() == "unexpected inference input 'X' for model 'm021'"
    client.close()


def test_metadata_says_which_model_and_backend_answered_and_when_it_was_cold(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m022"])
    with channel(gw) as ch:
        first, md1 = rpc(ch, "ModelInfer", infer_request("m022", [1.0, 2.0]), pb.ModelInferResponse)
        assert outputs(first) == {"OUTPUT0": [1.0 + offset("m022"), 2.0 + offset("m022")], "MODEL_NAME": "m022"}
        assert first.model_name == "m022"  # type: ignore[attr-defined]
        assert md1["x-modelyard-model"] == "m022" and md1["x-modelyard-cold"] == "1"
        assert md1["x-modelyard-backend"] in ("triton-0", "triton-1")
        second, md2 = rpc(
            ch,
            "ModelInfer",
            infer_request("m022", [3.0]),
            pb.ModelInferResponse,
            metadata=[
                ("x-request-id", "abc"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ],
        )
        assert outputs(second)["MODEL_NAME"] == "m022"
        assert "x-modelyard-cold" not in md2 and md2["x-modelyard-backend"] == md1["x-modelyard-backend"]
        ready, md3 = rpc(ch, "ModelReady", pb.ModelReadyRequest(name="m022"), pb.ModelReadyResponse)
        assert ready.ready and md3["x-modelyard-backend"] == md1["x-modelyard-backend"]  # type: ignore[attr-defined]
    metrics = samples(httpx.get(f"{gw.url}/metrics").text)
    assert total(metrics, "modelyard_requests_total", code="OK", op="ModelInfer", protocol="grpc", model="m022") == 2
    assert total(metrics, "modelyard_placement_total", result="miss") == 1
    assert new_loads() == ["m022"]


def test_no_evictable_model_gives_unavailable_with_a_retry_hint(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    warmer = start_gateway("--load-timeout", "120")  # loads the pinned models, however busy the machine
    gw = start_gateway("--load-timeout", "2")
    stack.register(
        capacity=1, models=["m023", "m024", "m025"], extra={"m023": {"pinned": True}, "m024": {"pinned": True}}
    )
    with stack.admin(warmer) as admin:
        for name in ("m023", "m024"):
            assert admin.post(f"/admin/models/{name}/load").status_code == 200
    with channel(gw) as ch:
        err = rpc_error(ch, "ModelInfer", infer_request("m025", [1.0]), timeout=60)
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err
    assert "pinned" in err.details() and "(retry in " in err.details()
    assert int(dict(err.trailing_metadata())["retry-after"]) >= 1
    assert "m025" not in new_loads()


def test_a_client_deadline_that_expires_during_a_cold_load_is_deadline_exceeded_and_the_load_goes_on(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m026"])
    client = triton_grpc.InferenceServerClient(gw.grpc_url)
    inp = triton_grpc.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    # A load of these models takes about 1.4 s on Triton (TRITON_FACTS.md, section e): far longer than 0.4 s.
    with pytest.raises(InferenceServerException) as late:
        client.infer("m026", [inp], client_timeout=0.4)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # The gateway answers a little before the deadline (5% of it, here 20 ms) with its own message; on a busy
    # machine the client's own timer can still fire first ('Deadline Exceeded'), so the gateway's side is read
    # from its metrics, which count the answer it gave whichever reached the client first.
    if late.value.message() != "Deadline Exceeded":
        assert "deadline passed while model 'm026' was loading" in late.value.message()
    eventually(
        lambda: (
            total(
                samples(httpx.get(f"{gw.url}/metrics").text),
                "modelyard_requests_total",
                protocol="grpc",
                op="ModelInfer",
                model="m026",
                code="DEADLINE_EXCEEDED",
            )
            == 1
        ),
        "the gateway's own DEADLINE_EXCEEDED answer in /metrics",
    )
    # The load went on: the next request is answered, and Triton loaded the model once.
    result = client.infer("m026", [inp], client_timeout=60)
    assert result.as_numpy("MODEL_NAME").tolist() == [b"m026"]
    assert new_loads() == ["m026"]
    client.close()


def test_a_deadline_shorter_than_the_backends_answer_is_deadline_exceeded(
    stack: LocalStack, start_gateway: StartGateway
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["slow"])  # answers after 1 s
    with stack.admin(gw) as admin:
        assert admin.post("/admin/models/slow/load").status_code == 200
    with channel(gw) as ch:
        err = rpc_error(ch, "ModelInfer", infer_request("slow", [1.0]), timeout=0.3)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer 'slow' within the client's deadline" in err.details()


def test_a_message_over_the_body_limit_is_resource_exhausted(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway("--max-body-bytes", "4096")
    stack.register(capacity=4, models=["m027"])
    with channel(gw) as ch:
        err = rpc_error(ch, "ModelInfer", infer_request("m027", [1.0] * 2000))
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in err.details() and "4096" in err.details()
        small, _ = rpc(ch, "ModelInfer", infer_request("m027", [1.0] * 10), pb.ModelInferResponse)
        assert outputs(small)["MODEL_NAME"] == "m027"
    assert new_loads() == ["m027"]


def test_http_and_grpc_requests_for_one_cold_model_cause_one_load(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m028"])
    n = 20
    barrier = threading.Barrier(n)

    def one(i: int) -> str:
        barrier.wait()
        if i % 2:
            with httpx.Client(timeout=120) as c:
                r = c.post(f"{gw.url}/v2/models/m028/infer", json=infer_body([float(i)]))
            assert r.status_code == 200, r.text
            check_answer("m028", [float(i)], r.json())
            return r.headers["x-modelyard-backend"]
        with channel(gw) as ch:
            resp, md = rpc(ch, "ModelInfer", infer_request("m028", [float(i)]), pb.ModelInferResponse, timeout=120)
        assert outputs(resp) == {"OUTPUT0": [i + offset("m028")], "MODEL_NAME": "m028"}
        return md["x-modelyard-backend"]

    with ThreadPoolExecutor(n) as pool:
        backends = list(pool.map(one, range(n)))
    assert len(set(backends)) == 1
    assert new_loads() == ["m028"]
    with stack.admin(gw) as admin:
        assert admin.get("/admin/models/m028").json()["loads"] == 1


def test_a_model_the_backend_lost_is_reloaded_transparently_over_grpc(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]]
) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["m029"])
    with channel(gw) as ch:
        _, md = rpc(ch, "ModelInfer", infer_request("m029", [1.0]), pb.ModelInferResponse)
        triton = stack.tritons[int(md["x-modelyard-backend"].split("-")[1])]
        # Behind the gateway's back (as after a backend restart), the model goes away.
        httpx.post(f"{triton.url}/v2/repository/models/m029/unload", json={}, timeout=10)
        eventually(lambda: "m029" not in stack.holding(triton), "Triton to drop m029")
        resp, md = rpc(ch, "ModelInfer", infer_request("m029", [5.0]), pb.ModelInferResponse, timeout=60)
    assert outputs(resp) == {"OUTPUT0": [5.0 + offset("m029")], "MODEL_NAME": "m029"}
    assert md["x-modelyard-cold"] == "1"
    assert new_loads() == ["m029", "m029"]


def test_repository_rpcs_are_refused_with_what_to_use_instead(start_gateway: StartGateway) -> None:
    gw = start_gateway()
    client = triton_grpc.InferenceServerClient(gw.grpc_url)
    for call in (
        lambda: client.load_model("m000"),
        lambda: client.unload_model("m000"),
    ):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "use the admin API (POST /admin/models/{name}/load" in refused.value.message()
    with pytest.raises(InferenceServerException) as shm:
        client.get_system_shared_memory_status()
    assert shm.value.status() == "StatusCode.UNIMPLEMENTED" and "shared-memory" in shm.value.message()
    client.close()


def test_a_triton_backend_without_grpc_url_is_unavailable_naming_it(
    stack: LocalStack, start_gateway: StartGateway
) -> None:
    gw = start_gateway()
    with stack.admin(gw) as admin:
        only = {"kind": "triton", "url": stack.tritons[0].url, "capacity": {"models": 2}}  # no grpc_url
        assert admin.put("/admin/backends/http-only", json=only).status_code == 200
        assert admin.put("/admin/models/m000", json={"runtime": "triton"}).status_code == 200
    with channel(gw) as ch:
        err = rpc_error(ch, "ModelInfer", infer_request("m000", [1.0]), timeout=60)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert "backend http-only has no gRPC endpoint: register it with a grpc_url" in err.details()
    # HTTP still reaches the same copy.
    r = httpx.post(f"{gw.url}/v2/models/m000/infer", json=infer_body([1.0]), timeout=60)
    assert r.status_code == 200 and r.headers["x-modelyard-backend"] == "http-only"


def test_sigterm_lets_an_inflight_grpc_request_finish(stack: LocalStack, start_gateway: StartGateway) -> None:
    gw = start_gateway()
    stack.register(capacity=4, models=["slow"])
    with stack.admin(gw) as admin:
        assert admin.post("/admin/models/slow/load").status_code == 200
    result: dict[str, object] = {}

    def slow_request() -> None:  # the model takes 1 s to answer
        with channel(gw) as ch:
            result["r"], _ = rpc(ch, "ModelInfer", infer_request("slow", [3.0]), pb.ModelInferResponse, timeout=60)

    caller = threading.Thread(target=slow_request)
    caller.start()
    # SIGTERM once the gateway has the request (it counts a placement hit before forwarding it).
    eventually(
        lambda: total(samples(httpx.get(f"{gw.url}/metrics").text), "modelyard_placement_total", result="hit") >= 1,
        "the gateway took the slow request",
    )
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    caller.join()
    assert outputs(result["r"]) == {"OUTPUT0": [3.0 + offset("slow")], "MODEL_NAME": "slow"}  # type: ignore[arg-type]
    assert gw.proc.wait(30) == 0


def test_a_grpc_port_in_use_stops_the_gateway_with_a_clear_message(stack: LocalStack, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        gw = GatewayProcess(stack.redis.url, tmp_path, token=TOKEN)
        gw.grpc_port = taken.getsockname()[1]
        gw.args[gw.args.index("--grpc-port") + 1] = str(gw.grpc_port)
        with pytest.raises(RuntimeError, match="gateway exited with 1"):
            gw.start()
    assert f"cannot listen for gRPC on 127.0.0.1:{gw.grpc_port} (--grpc-port): Address already in use" in gw.log_tail()
