"""The sequence parameters of an inference request (`sequence_id`, `sequence_start`, `sequence_end`).

Read cheaply, without parsing tensors: over HTTP the JSON header (the part before the binary tensor data) is
parsed only when it mentions `sequence_id`; over gRPC only the `parameters` map of `ModelInferRequest` is
opened (`adapters.protowire.map_parameters`). Triton's sequence id is an unsigned integer or a string; 0 and
"" mean "no sequence", as in Triton.
"""

from __future__ import annotations

import json

from adapters.protowire import WireError, map_parameters
from gateway.errors import BadRequest
from gateway.routing import HeaderLookup
from placement.affinity import SequenceFlags

_KEYS = frozenset({"sequence_id", "sequence_start", "sequence_end"})
_PARAMETERS = 4  # ModelInferRequest.parameters
_MARK = b'"sequence_id"'


def _flags(found: dict[str, object]) -> SequenceFlags | None:
    seq = found.get("sequence_id")
    if seq is None or seq is False or isinstance(seq, float) or str(seq) in ("", "0"):
        return None
    return SequenceFlags(str(seq), found.get("sequence_start") is True, found.get("sequence_end") is True)


def http_sequence(body: bytes, header: HeaderLookup) -> SequenceFlags | None:
    """The sequence of a KServe v2 JSON (or binary-extension) infer request, or None."""
    size = header("inference-header-content-length")
    try:
        head = body[: int(size)] if size is not None else body
    except ValueError:
        return None  # the backend will refuse it, with its own words
    if _MARK not in head:
        return None
    try:
        doc = json.loads(head)
    except ValueError:
        return None
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        return None
    seq = params.get("sequence_id")
    if isinstance(seq, bool) or not isinstance(seq, int | str):
        if seq is not None:
            raise BadRequest("parameters.sequence_id must be an unsigned integer or a string")
        return None
    return _flags(params)


def grpc_sequence(body: bytes) -> SequenceFlags | None:
    """The sequence of a `ModelInferRequest`, or None."""
    try:
        return _flags(dict(map_parameters(body, _PARAMETERS, _KEYS)))
    except WireError:
        return None  # the backend refuses malformed bytes with its own words
