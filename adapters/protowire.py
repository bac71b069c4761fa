"""Just enough of the protobuf wire format to route gRPC messages without parsing them.

The gRPC data plane reads one or two top-level string fields of a request (a model's name and version) and,
for routes, replaces one of them; everything else stays the bytes the client sent, unknown fields included.
Scanning the top-level fields skips each length-delimited field (tensors, parameters) by its length, so the
cost does not grow with the size of the tensors; parsing the whole message with its generated class would
copy every byte of them (measured in `loadtests/grpc_parse_cost.py`).

Semantics follow protobuf's: for a non-repeated field that occurs more than once, the last occurrence wins.
"""

from __future__ import annotations

from collections.abc import Iterable

# Wire types.
VARINT = 0
I64 = 1
LEN = 2
I32 = 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """The varint at `buf[i:]` and the index after it."""
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if i >= n:
            raise WireError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def string_fields(buf: bytes, numbers: Iterable[int]) -> tuple[dict[int, str], list[tuple[int, int]]]:
    """The last value of each wanted string field (top level only), and the spans of every occurrence.

    Returns `({number: value}, [(start, end) of each occurrence of a wanted field, tag included])`.
    Raises `WireError` for malformed bytes, a wanted field that is not length-delimited, or one that is not UTF-8.
    """
    wanted = frozenset(numbers)
    found: dict[int, str] = {}
    spans: list[tuple[int, int]] = []
    i = 0
    n = len(buf)
    try:
        while i < n:
            start = i
            # One-byte tags and lengths are the common case: read them inline, fall back to _varint.
            key = buf[i]
            if key < 0x80:
                i += 1
            else:
                key, i = _varint(buf, i)
            if key < 8:
                raise WireError("field number 0")
            wire = key & 7
            if wire == LEN:
                length = buf[i]
                if length < 0x80:
                    i += 1
                else:
                    length, i = _varint(buf, i)
                end = i + length
                if end > n:
                    raise WireError(f"field {key >> 3} runs past the end of the message")
                if key >> 3 in wanted:
                    found[key >> 3] = buf[i:end].decode("utf-8")
                    spans.append((start, end))
                i = end
            elif key >> 3 in wanted:
                raise WireError(f"field {key >> 3} has wire type {wire}, expected a string")
            elif wire == VARINT:
                _, i = _varint(buf, i)
            elif wire == I64:
                i += 8
            elif wire == I32:
                i += 4
            else:  # groups (3, 4) are in no message modelyard routes; 6 and 7 do not exist
                raise WireError(f"unsupported wire type {wire} in field {key >> 3}")
    except IndexError:
        raise WireError("truncated message") from None
    except UnicodeDecodeError:
        raise WireError("a string field is not valid UTF-8") from None
    if i > n:
        raise WireError("truncated message")
    return found, spans


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_string(number: int, value: str) -> bytes:
    data = value.encode("utf-8")
    return encode_varint(number << 3 | LEN) + encode_varint(len(data)) + data


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
