"""The top-level protobuf scan that routes gRPC requests, checked against protobuf's own parser."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc.service_pb2 as pb

from adapters.protowire import WireError, encode_bool, encode_string, replace_string, string_fields


def infer_request(name: str = "m001", version: str = "1", values: int = 4) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name, model_version=version, id="r1")
    req.parameters["priority"].int64_param = 3
    t = req.inputs.add()
    t.name = "INPUT0"
    t.datatype = "FP32"
    t.shape.append(values)
    req.raw_input_contents.append(np.arange(values, dtype=np.float32).tobytes())
    req.outputs.add().name = "OUTPUT0"
    return req


@pytest.mark.parametrize("values", [0, 1, 200, 70_000])  # lengths of 1, 2 and 3 varint bytes
def test_reads_name_and_version_like_protobuf(values: int) -> None:
    raw = infer_request(values=values).SerializeToString()
    found, spans = string_fields(raw, (1, 2))
    assert found == {1: "m001", 2: "1"}
    assert [raw[s:e] for s, e in spans] == [encode_string(1, "m001"), encode_string(2, "1")]


def test_the_last_occurrence_wins_as_in_protobuf() -> None:
    raw = infer_request().SerializeToString() + encode_string(1, "later")  # a merge of two messages
    assert string_fields(raw, (1,))[0] == {1: "later"} == {1: pb.ModelInferRequest.FromString(raw).model_name}


def test_absent_fields_are_absent() -> None:
    assert string_fields(pb.ModelReadyRequest(name="m").SerializeToString(), (1, 2))[0] == {1: "m"}
    assert string_fields(b"", (1, 2)) == ({}, [])


def test_replace_keeps_every_other_byte_including_unknown_fields() -> None:
    unknown = b"\x9a\x06\x03abc"  # field 99, length-delimited: unknown to ModelInferRequest
    raw = infer_request().SerializeToString() + unknown
    out = replace_string(raw, 1, "m002-with-a-longer-name")
    parsed = pb.ModelInferRequest.FromString(out)
    expected = infer_request()
    expected.model_name = "m002-with-a-longer-name"
    assert out.endswith(unknown)  # the unknown field is still there, byte for byte
    parsed.DiscardUnknownFields()
    assert parsed == expected
    # Every occurrence goes, one takes the first one's place.
    twice = raw + encode_string(1, "again")
    assert string_fields(replace_string(twice, 1, "x"), (1,)) == ({1: "x"}, [(0, 3)])
    # A message without the field gets it in front.
    assert replace_string(b"\x12\x011", 1, "m") == encode_string(1, "m") + b"\x12\x011"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x0a\x05ab", "runs past the end"),
        (b"\x0a", "truncated"),
        (b"\x08\x01", "wire type 0, expected a string"),  # field 1 as a varint
        (b"\x0a\x02\xff\xfe", "not valid UTF-8"),
        (b"\x02\x00", "field number 0"),
        (b"\x1b", "unsupported wire type 3"),
        (b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 10 bytes"),
        (b"\x1d\x00", "truncated"),  # a fixed32 cut short
    ],
)
def test_malformed_bytes_raise_wire_error(raw: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        string_fields(raw, (1, 2))


def test_encoders_match_protobuf() -> None:
    assert encode_bool(1, True) == pb.ModelReadyResponse(ready=True).SerializeToString()
    assert encode_bool(1, False) == pb.ModelReadyResponse(ready=False).SerializeToString() == b""
    meta = pb.ServerMetadataResponse(name="modelyard", version="0.1.0", extensions=["a", "b"])
    assert (
        encode_string(1, "modelyard") + encode_string(2, "0.1.0") + encode_string(3, "a") + encode_string(3, "b")
        == meta.SerializeToString()
    )
    long = "x" * 300
    assert encode_string(1, long) == pb.ModelReadyRequest(name=long).SerializeToString()
