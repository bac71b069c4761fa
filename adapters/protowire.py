"""modelyard's protobuf wire format: just enough to route gRPC messages without parsing them.

The gRPC data planes read a few top-level fields of each request and, for routes, replace one; everything else
stays the bytes the client sent, unknown fields included:
- `records`: the one walk over a message's top-level records (field, wire type, where it starts, its payload
  and where it ends), for a whole buffer or a sub-message in it. TF Serving's `read_model_spec` and
  `rewrite_model_name` (`adapters.tfserving_proto.messages`) find and splice their model_spec with it.
- `string_fields` and `replace_string`, built on `records`: the last value of some top-level string fields, and
  the message with one of them replaced (KServe's model name and version, `gateway.grpc_dataplane`).
- `read_varint`, `encode_varint`, and the encoders of a length-delimited field (`encode_len`), a string
  (`encode_string`) and a bool (`encode_bool`), for the few answers the gateway writes itself.
- `WireError`, a `ValueError`: the bytes are not a protobuf message.

Walking the top-level records costs a few varint reads per record and skips each length-delimited one (tensors,
parameters, examples) by its length, so the cost does not grow with the size of the tensors; parsing the message
with protobuf copies every byte of them, even into a class that declares only the fields wanted (they go to its
unknown fields), and serializing copies them again (`python -m loadtests.grpc_parse_cost` compares the two).

The walk checks the structure the way protobuf's parser does at the level it visits (tags, varints, lengths,
groups, nested no deeper than protobuf's recursion limit), so it accepts and rejects the same bytes; the
payloads of the records it skips are not looked into, just as a parser keeps unknown fields. `string_fields` is
stricter in one way: a wanted field that is not length-delimited, or not UTF-8, is a `WireError` (protobuf would
keep the former as an unknown field). Semantics follow protobuf's: for a non-repeated field that occurs more
than once, the last occurrence wins.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator

# Wire types.
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

_MAX_DEPTH = 100  # protobuf's default recursion limit

Buffer = bytes | memoryview


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """The varint at `buf[pos:end]` and the position after it."""
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


def _read_tag(buf: Buffer, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag) of the tag at `pos`."""
    tag, after = read_varint(buf, pos, end)
    field, wire_type = tag >> 3, tag & 7
    if field == 0 or tag > 0xFFFFFFFF:
        raise WireError(f"invalid field tag {tag} at byte {pos}")
    return field, wire_type, after


def _skip_value(buf: Buffer, field: int, wire_type: int, pos: int, end: int, depth: int) -> tuple[int, int]:
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


def records(
    buf: Buffer, pos: int = 0, end: int | None = None, only: Container[int] | None = None
) -> Iterator[tuple[int, int, int, int, int]]:
    """The records of the message in `buf[pos:end]` (all of `buf` by default), in wire order:
    (field number, wire type, record start, payload start, record end).

    The payload of a length-delimited record is `buf[payload start:record end]`; a group's payload is empty (its
    end-group tag is the last byte of the record). With `only`, just the records of those field numbers: every
    record is still walked and checked, but this is cheaper than filtering afterwards on a message with many
    records. Raises `WireError` where protobuf's parser would reject the bytes, at the first bad record (the
    records before it have been yielded).
    """
    if end is None:
        end = len(buf)
    while pos < end:
        start = pos
        # One-byte tags and lengths are the common case: read them inline, fall back to the general readers.
        tag = buf[pos]
        if 8 <= tag < 0x80:
            field, wire_type = tag >> 3, tag & 7
            pos += 1
        else:
            field, wire_type, pos = _read_tag(buf, pos, end)
        if wire_type == LEN and pos < end and (length := buf[pos]) < 0x80 and length < end - pos:
            payload = pos + 1
            pos = payload + length
        else:  # everything else, errors included
            payload, pos = _skip_value(buf, field, wire_type, pos, end, 0)
        if only is None or field in only:
            yield field, wire_type, start, payload, pos


def string_fields(buf: bytes, numbers: Iterable[int]) -> tuple[dict[int, str], list[tuple[int, int]]]:
    """The last value of each wanted string field (top level only), and the spans of every occurrence.

    Returns `({number: value}, [(start, end) of each occurrence of a wanted field, tag included])`.
    Raises `WireError` for malformed bytes, a wanted field that is not length-delimited, or one that is not UTF-8.
    """
    wanted = frozenset(numbers)
    found: dict[int, str] = {}
    spans: list[tuple[int, int]] = []
    try:
        for field, wire_type, start, payload, end in records(buf, only=wanted):
            if wire_type != LEN:
                raise WireError(f"field {field} has wire type {wire_type}, expected a string")
            found[field] = buf[payload:end].decode("utf-8")
            spans.append((start, end))
    except UnicodeDecodeError:
        raise WireError("a string field is not valid UTF-8") from None
    return found, spans


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_len(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a sub-message."""
    return encode_varint(number << 3 | LEN) + encode_varint(len(payload)) + payload


def encode_string(number: int, value: str) -> bytes:
    return encode_len(number, value.encode("utf-8"))


def encode_bool(number: int, value: bool) -> bytes:
    """A bool field; proto3 leaves false out."""
    return encode_varint(number << 3 | VARINT) + b"\x01" if value else b""


def replace_string(buf: bytes, number: int, value: str) -> bytes:
    """`buf` with every occurrence of top-level string field `number` replaced by one holding `value`.

    The new field goes where the first occurrence was (first of all when there was none); every other byte is
    kept as it was, unknown fields included.
    """
    _, spans = string_fields(buf, (number,))
    field = encode_string(number, value)
    if not spans:
        return field + buf
    parts = [buf[: spans[0][0]], field]
    for (_, end), nxt in zip(spans, [*spans[1:], (len(buf), len(buf))], strict=True):
        parts.append(buf[end : nxt[0]])
    return b"".join(parts)


def _param_value(buf: Buffer, pos: int, end: int) -> str | bool | None:
    """The value of a KServe `InferParameter` (bool, int64, string, double or uint64 choice) as text or bool."""
    value: str | bool | None = None
    for field, wire_type, _, payload, after in records(buf, pos, end):
        if field == 1 and wire_type == VARINT:
            value = bool(read_varint(buf, payload, after)[0])
        elif field in (2, 5) and wire_type == VARINT:
            number = read_varint(buf, payload, after)[0]
            value = str(number - (1 << 64) if field == 2 and number >= 1 << 63 else number)
        elif field == 3 and wire_type == LEN:
            value = bytes(buf[payload:after]).decode("utf-8", "replace")
    return value


def map_parameters(buf: Buffer, number: int, keys: Container[str]) -> dict[str, str | bool | None]:
    """Some entries of the top-level `map<string, InferParameter>` field `number` (KServe's `parameters`).

    Only the map's entries are opened, and only those whose key is wanted; tensors are skipped by their length.
    """
    found: dict[str, str | bool | None] = {}
    for _, wire_type, _, payload, end in records(buf, only=(number,)):
        if wire_type != LEN:
            raise WireError(f"field {number} has wire type {wire_type}, expected a map entry")
        key: str | None = None
        span: tuple[int, int] | None = None
        for field, entry_type, _, inner, after in records(buf, payload, end):
            if field == 1 and entry_type == LEN:
                key = bytes(buf[inner:after]).decode("utf-8", "replace")
            elif field == 2 and entry_type == LEN:
                span = (inner, after)
        if key is not None and key in keys:
            found[key] = _param_value(buf, *span) if span is not None else None
    return found
