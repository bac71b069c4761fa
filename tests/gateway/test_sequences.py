"""Reading a request's sequence parameters without parsing its tensors (HTTP JSON and binary, gRPC)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from gateway.errors import BadRequest
from gateway.sequences import grpc_sequence, http_sequence
from placement.affinity import SequenceFlags


def _grpc(**params: object) -> bytes:
    req = service_pb2.ModelInferRequest(model_name="m")
    for key, value in params.items():
        if isinstance(value, bool):
            req.parameters[key].bool_param = value
        elif isinstance(value, int):
            req.parameters[key].uint64_param = value
        else:
            req.parameters[key].string_param = str(value)
    tensor = req.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    req.raw_input_contents.append(b"\0" * 64)
    return req.SerializeToString()


def test_grpc_sequence_parameters() -> None:
    assert grpc_sequence(_grpc(sequence_id=42, sequence_start=True)) == SequenceFlags("42", True, False)
    assert grpc_sequence(_grpc(sequence_id="abc", sequence_end=True)) == SequenceFlags("abc", False, True)
    assert grpc_sequence(_grpc(sequence_id=0)) is None
    assert grpc_sequence(_grpc()) is None
    int64 = service_pb2.ModelInferRequest()
    int64.parameters["sequence_id"].int64_param = 5
    assert grpc_sequence(int64.SerializeToString()) == SequenceFlags("5")


def test_http_sequence_parameters_json_and_binary() -> None:
    def header(size: int | None = None):  # type: ignore[no-untyped-def]
        return lambda name: str(size) if size is not None and name == "inference-header-content-length" else None

    doc = {"inputs": [], "parameters": {"sequence_id": 9, "sequence_start": True}}
    assert http_sequence(json.dumps(doc).encode(), header()) == SequenceFlags("9", True, False)
    assert http_sequence(b'{"inputs": []}', header()) is None
    with pytest.raises(BadRequest):
        http_sequence(b'{"parameters": {"sequence_id": [1]}}', header())
    # The binary tensor extension, as tritonclient builds it: only the JSON header is read.
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32), binary_data=True)
    body, size = httpclient.InferenceServerClient.generate_request_body([inp], sequence_id="s-1", sequence_end=True)
    assert size is not None
    assert http_sequence(body, header(size)) == SequenceFlags("s-1", False, True)
