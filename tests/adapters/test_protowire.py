"""The protobuf wire walk that routes gRPC requests (KServe's and TF Serving's), checked against protobuf's own
parser. The TF Serving messages built on it are tested in test_tfserving_wire.py."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.service_pb2 as pb
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from adapters.protowire import (
    LEN,
    WireError,
    encode_bool,
    encode_len,
    encode_string,
    encode_varint,
    read_varint,
    records,
    replace_string,
    string_fields,
)


def _views() -> tuple[Any, Any]:
    """Two messages for protobuf's parser to compare with: `RouteView` declares only KServe's model_name and
    model_version (proto3 strings, so UTF-8 is checked); in `Opaque` every field the tests send is unknown, so the
    parser checks the structure of the top-level records only, as `records` does. (`Opaque` declares one field
    nobody sends: upb lets field number 0 through in a message that declares no field at all.)"""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="protowire_test.proto", package="protowire_test", syntax="proto3")
    route = file.message_type.add(name="RouteView")
    for name, number in (("model_name", 1), ("model_version", 2)):
        route.field.add(name=name, number=number, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    opaque = file.message_type.add(name="Opaque")
    opaque.field.add(name="unused", number=(1 << 29) - 1, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    route_view, opaque_view = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"protowire_test.{name}"))
        for name in ("RouteView", "Opaque")
    )
    return route_view, opaque_view


RouteView, Opaque = _views()


def nested_groups(depth: int) -> bytes:
    """Field 99 as `depth` groups, each in the one before."""
    return b"\x9b\x06" * depth + b"\x9c\x06" * depth


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
    unknown = b"\x9a\x06\x03abc" + nested_groups(2)  # field 99, length-delimited, then as groups: unknown
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


def damaged(raw: bytes, flips: int) -> list[bytes]:
    """Every truncation of `raw`, and `flips` copies with one to three random bytes changed (always the same)."""
    rng = random.Random(1234)
    out = [raw[:n] for n in range(len(raw))]
    for _ in range(flips):
        mutable = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            mutable[rng.randrange(len(mutable))] = rng.randrange(256)
        out.append(bytes(mutable))
    return out


# Bytes protobuf's parser rejects, whatever the message: not the structure of a message.
MALFORMED = [
    (b"\x0a\x05abc", "field 1: length 5 at byte 1 runs past the end"),
    (b"\x0a", "truncated varint at byte 1"),
    (b"\x08", "truncated varint at byte 1"),
    (b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint longer than 10 bytes"),
    (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint longer than 10 bytes"),  # in a tag
    (b"\x00\x01", "invalid field tag 0 at byte 0"),
    (b"\x02\x00", "invalid field tag 2 at byte 0"),  # field number 0
    (b"\x88\x80\x80\x80\x10\x00", "invalid field tag 4294967304"),  # more than 32 bits
    (b"\x0f", "invalid wire type 7"),
    (b"\x1e", "invalid wire type 6"),
    (b"\x13\x08\x01", "group 2 not closed"),
    (b"\x1b", "group 3 not closed"),
    (b"\x13\x1c", "group 2 closed by an end-group tag of field 3"),
    (b"\x14", "end-group tag of field 2 at byte 1 closes no group"),
    (b"\x1d\x00", "field 3: truncated fixed-width value"),  # a fixed32 cut short
    (b"\x19\x00\x00\x00\x00\x00\x00\x00", "field 3: truncated fixed-width value"),  # a fixed64 cut short
    (nested_groups(101), "groups nested deeper than 100"),  # protobuf's recursion limit
]


@pytest.mark.parametrize(("raw", "why"), MALFORMED)
def test_malformed_bytes_raise_wire_error_as_protobuf_rejects_them(raw: bytes, why: str) -> None:
    for view in (RouteView, Opaque):
        with pytest.raises(Exception):  # noqa: B017  (upb's DecodeError)
            view.FromString(raw)
    with pytest.raises(WireError, match=why):
        list(records(raw))
    with pytest.raises(WireError, match=why):
        string_fields(raw, (1, 2))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x08\x01", "field 1 has wire type 0, expected a string"),  # field 1 as a varint
        (b"\x0b\x0c", "field 1 has wire type 3, expected a string"),  # field 1 as a group
        (b"\x0a\x02\xff\xfe", "not valid UTF-8"),
    ],
)
def test_a_wanted_field_that_is_no_string_is_a_wire_error(raw: bytes, why: str) -> None:
    """Stricter than protobuf, which keeps a field of the wrong wire type as an unknown field."""
    with pytest.raises(WireError, match=why):
        string_fields(raw, (1, 2))
    assert string_fields(raw, (2,)) == ({}, [])  # only wanted fields are looked into


def test_records_are_every_top_level_record_in_wire_order() -> None:
    group = b"\x9b\x06\x08\x01\x0b\x10\x02\x0c\x9c\x06"  # group 99 { 1: 1, group 1 { 2: 2 } }
    parts = [
        encode_string(1, "m"),
        b"\x18\x96\x01",  # 3: 150, a varint
        b"\x21" + bytes(8),  # 4: fixed64
        b"\x2d" + bytes(4),  # 5: fixed32
        group,
        encode_len(6, bytes(300)),  # a two-byte length
        encode_len(7, b""),
    ]
    raw = b"".join(parts)
    starts = [sum(map(len, parts[:i])) for i in range(len(parts) + 1)]
    assert list(records(raw)) == [
        (1, LEN, 0, 2, 3),
        (3, 0, 3, 4, 6),
        (4, 1, 6, 7, 15),
        (5, 5, 15, 16, 20),
        (99, 3, 20, 30, 30),  # a group's payload is empty: its end-group tag closes the record
        (6, LEN, starts[5], starts[5] + 3, starts[6]),
        (7, LEN, starts[6], starts[7], starts[7]),
    ]
    assert Opaque.FromString(raw).SerializeToString() == raw  # protobuf reads the same records
    # A part of the buffer (a sub-message) and some of the fields only: positions stay the buffer's.
    view = memoryview(b"junk" + raw)
    assert list(records(view, 4 + 3, 4 + 20, only={3, 5})) == [(3, 0, 7, 8, 10), (5, 5, 19, 20, 24)]
    assert list(records(b"")) == []
    assert len(list(records(nested_groups(100)))) == 1  # as deep as protobuf goes


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 1 << 32, (1 << 64) - 1])
def test_varints_round_trip(value: int) -> None:
    raw = encode_varint(value)
    assert read_varint(raw, 0, len(raw)) == (value, len(raw))
    assert read_varint(b"x" + raw + b"y", 1, len(raw) + 1) == (value, len(raw) + 1)
    with pytest.raises(WireError, match="truncated varint"):
        read_varint(raw, 0, len(raw) - 1)


def test_the_walk_agrees_with_protobuf_on_damaged_bytes() -> None:
    """`records` accepts exactly what protobuf's parser accepts (with no field declared), and `string_fields` reads
    the same model name and version as protobuf (or refuses a field 1 or 2 that is no string, see above): checked on
    truncated and bit-flipped requests."""
    raw = infer_request().SerializeToString() + nested_groups(2) + b"\x9d\x06" + bytes(4)  # a group and a fixed32
    outcomes = {"ok": 0, "rejected": 0}
    for candidate in damaged(raw, 600):
        try:
            Opaque.FromString(candidate)
        except Exception:
            with pytest.raises(WireError):
                list(records(candidate))
        else:
            assert b"".join(candidate[s:e] for _, _, s, _, e in records(candidate)) == candidate
        try:
            route = RouteView.FromString(candidate)
        except Exception:
            with pytest.raises(WireError):
                string_fields(candidate, (1, 2))
            outcomes["rejected"] += 1
            continue
        try:
            found, _ = string_fields(candidate, (1, 2))
        except WireError as exc:
            assert "expected a string" in str(exc), candidate
            continue
        assert (found.get(1, ""), found.get(2, "")) == (route.model_name, route.model_version), candidate
        outcomes["ok"] += 1
    assert outcomes["ok"] > 50 and outcomes["rejected"] > 50, outcomes


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
    assert encode_len(8, b"\x00" * 200) == pb.InferTensorContents(bytes_contents=[b"\x00" * 200]).SerializeToString()
