"""How a shadow's answer is compared with the primary's (`gateway.shadows.same_answer`)."""

from __future__ import annotations

import json

from adapters.base import ForwardResponse
from adapters.protowire import encode_string
from gateway.shadows import same_answer


def kserve(model: str, data: list[float], tail: bytes = b"") -> ForwardResponse:
    head = json.dumps({"model_name": model, "model_version": "1", "outputs": [{"name": "y", "data": data}]}).encode()
    headers = [("inference-header-content-length", str(len(head)))] if tail else []
    return ForwardResponse(200, headers, head + tail)


def test_kserve_json_answers_agree_on_their_outputs_whatever_model_answered() -> None:
    assert same_answer("kserve", kserve("a", [1.0]), kserve("b", [1.0]))
    assert not same_answer("kserve", kserve("a", [1.0]), kserve("b", [2.0]))
    assert same_answer("kserve", kserve("a", [], b"\x01\x02"), kserve("bb", [], b"\x01\x02"))
    assert not same_answer("kserve", kserve("a", [], b"\x01\x02"), kserve("b", [], b"\x01\x03"))


def test_statuses_must_match_and_two_refusals_agree() -> None:
    ok, refused = kserve("a", [1.0]), ForwardResponse(400, [], b'{"error": "bad input for a"}')
    assert not same_answer("kserve", ok, refused)
    assert same_answer("kserve", refused, ForwardResponse(400, [], b'{"error": "bad input for b"}'))
    assert not same_answer("kserve", ok, ForwardResponse(200, [], b"not json"))


def test_tfserving_rest_compares_predictions() -> None:
    a = ForwardResponse(200, [], b'{"predictions": [[1.0]]}')
    assert same_answer("tfserving", a, ForwardResponse(200, [], b'{ "predictions" : [[1.0]] }'))
    assert not same_answer("tfserving", a, ForwardResponse(200, [], b'{"predictions": [[2.0]]}'))


def test_grpc_answers_agree_but_for_the_fields_naming_the_model_or_request() -> None:
    def infer_response(model: str, request_id: str, raw_output: str) -> ForwardResponse:
        fields = encode_string(1, model) + encode_string(2, "1") + encode_string(3, request_id)
        return ForwardResponse(0, [], fields + encode_string(6, raw_output))

    a = infer_response("a", "r1", "\x00\x01")
    assert same_answer("kserve-grpc", a, infer_response("bbb", "r2", "\x00\x01"))
    assert not same_answer("kserve-grpc", a, infer_response("a", "r1", "\x00\x02"))

    def predict_response(model: str, outputs: str) -> ForwardResponse:
        return ForwardResponse(0, [], encode_string(1, outputs) + encode_string(2, model))  # model_spec is field 2

    assert same_answer("tfserving-grpc", predict_response("a", "y"), predict_response("bbb", "y"))
    assert not same_answer("tfserving-grpc", predict_response("a", "y"), predict_response("a", "z"))
