"""Just enough of the protobuf wire format to find and replace one sub-message without parsing the rest.

`read_model_spec` and `rewrite_model_name` run on every gRPC data-plane request. Parsing a whole PredictRequest,
even into a view that declares only model_spec, copies every tensor byte into the message's unknown fields, and
serializing copies them again. Walking the top-level records instead costs a few varint reads per record (a
PredictRequest has one record per input tensor), never touches tensor bytes, and lets a rewrite splice the new
model_spec into place with a single copy of the rest, so the other bytes stay exactly where they were.

The walk checks the structure the way a protobuf parser does at the levels it visits (tags, varints, lengths,
groups); the payloads of the records it skips are not looked into, just as a parser keeps unknown fields.
"""

from __future__ import annotations

from collections.abc import Iterator

# wire types
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

_MAX_DEPTH = 100  # protobuf's default recursion limit


class WireError(ValueError):
    """The bytes are not a protobuf message."""


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes before byte {pos}")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_tag(buf: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    tag, after = read_varint(buf, pos, end)
    field, wire_type = tag >> 3, tag & 7
    if field == 0 or tag > 0xFFFFFFFF:
        raise WireError(f"invalid field tag {tag} at byte {pos}")
    return field, wire_type, after


def _skip_value(buf: memoryview, field: int, wire_type: int, pos: int, end: int, depth: int) -> tuple[int, int]:
    """Skip the value of a record whose tag ended at `pos`: (start of the payload, end of the record)."""
    if wire_type == VARINT:
        return pos, read_varint(buf, pos, end)[1]
    if wire_type == LEN:
        length, start = read_varint(buf, pos, end)
        if length > end - start:
            raise WireError(f"field {field}: length {length} at byte {pos} runs past the end ({end - start} left)")
        return start, start + length
    if wire_type in (I64, I32):
        after = pos + (8 if wire_type == I64 else 4)
        if after > end:
            raise WireError(f"field {field}: truncated fixed-width value at byte {pos}")
        return pos, after
    if wire_type == SGROUP:
        if depth >= _MAX_DEPTH:
            raise WireError(f"groups nested deeper than {_MAX_DEPTH} at byte {pos}")
        while True:
            if pos >= end:
                raise WireError(f"group {field} not closed")
            inner, inner_type, pos = _read_tag(buf, pos, end)
            if inner_type == EGROUP:
                if inner != field:
                    raise WireError(f"group {field} closed by an end-group tag of field {inner}")
                return pos, pos
            pos = _skip_value(buf, inner, inner_type, pos, end, depth + 1)[1]
    if wire_type == EGROUP:
        raise WireError(f"end-group tag of field {field} at byte {pos} closes no group")
    raise WireError(f"field {field}: invalid wire type {wire_type} at byte {pos}")


def records(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The records of the message in buf[pos:end]: (field, wire type, record start, payload start, record end).

    The payload of a length-delimited record is buf[payload start:record end].
    """
    while pos < end:
        start = pos
        field, wire_type, pos = _read_tag(buf, pos, end)
        payload, pos = _skip_value(buf, field, wire_type, pos, end, 0)
        yield field, wire_type, start, payload, pos
