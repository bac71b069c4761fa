"""`--forward-headers` end to end: a stock `tritonclient.http` client's headers reach a real Triton model.

Triton shows a request's HTTP headers to the model only when started with `--http-header-forward-pattern`
(as request parameters, which the Python backend reads with `request.parameters()`), and the session stack's
Tritons don't pass it: this test runs a Triton of its own with a pattern that lets every header through, so what
the model sees is exactly what the gateway chose to forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tritonclient.http as triton_http

from deploy.localstack.stack import LocalStack
from deploy.localstack.triton import TritonServer, free_port
from tests.gateway.conftest import StartGateway

MODEL = "hdrecho"
_CONFIG = """\
name: "hdrecho"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
_MODEL_PY = """\
# PARAMS: the request's parameters as Triton gives them to the model, forwarded headers included (JSON).
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            params = np.array([request.parameters().encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PARAMS", params)]))
        return out
"""
HEADERS = {"X-User-Id": "u7", "X-Other": "o", "Authorization": "Bearer secret", "Cookie": "s=1"}


def _seen(client: triton_http.InferenceServerClient) -> dict[str, str]:
    """The headers the model saw (lower-case names), for one request carrying `HEADERS`."""
    tensor = triton_http.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    result = client.infer(MODEL, [tensor], headers=HEADERS)
    params = json.loads(result.as_numpy("PARAMS")[0])
    return {k.lower(): v for k, v in params.items()}


def test_headers_matching_the_pattern_reach_the_model_and_credentials_only_when_named(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(_CONFIG)
    (repo / MODEL / "1" / "model.py").write_text(_MODEL_PY)
    triton = TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=tmp_path / "triton.log",
        extra_args=["--http-header-forward-pattern=.*"],
    )
    triton.start()
    try:
        # `auth.*` matches Authorization without naming it: a broad pattern never lets a credential through.
        gw = start_gateway("--forward-headers", "^(x-user-.*|auth.*|cookie)$")
        with stack.admin(gw) as admin:
            spec = {"kind": "triton", "url": triton.url, "grpc_url": triton.grpc_url, "capacity": {"models": 1}}
            assert admin.put("/admin/backends/hdr", json=spec).status_code == 200
            assert admin.put(f"/admin/models/{MODEL}", json={"runtime": "triton"}).status_code == 200
        through = triton_http.InferenceServerClient(gw.url.removeprefix("http://"))
        direct = triton_http.InferenceServerClient(triton.url.removeprefix("http://"))
        try:
            seen = _seen(through)  # a cold model: this request loads it
            assert seen["x-user-id"] == "u7" and seen["cookie"] == "s=1"  # matched; the cookie named
            assert "x-other" not in seen and "authorization" not in seen
            # Directly, Triton's own pattern (everything here) lets all four through: the gateway's choice is
            # what the model sees above, not Triton's.
            assert {k.lower() for k in HEADERS} <= set(_seen(direct))
        finally:
            through.close()
            direct.close()
    finally:
        triton.stop()
