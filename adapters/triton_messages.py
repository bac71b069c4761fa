"""Triton gRPC messages the gateway writes itself, from Triton's JSON (the runtime's message classes stay here).

- `statistics_response`: Triton's HTTP statistics (`{"model_stats": [...]}`, as `GET /v2/models/stats`
  answers) as a serialized `ModelStatisticsResponse`. Fields this client library's messages don't know (a
  newer Triton's) are dropped rather than refused.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb


def statistics_response(stats: dict[str, Any]) -> bytes:
    """Raises `ValueError` when a known field holds a value of the wrong kind."""
    try:
        message = json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"statistics don't fit ModelStatisticsResponse: {exc}") from exc
    return bytes(message.SerializeToString())
