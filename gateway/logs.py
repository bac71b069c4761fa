"""The gateway's log: one JSON object per line (`--log-format json`) or readable text (`--log-format text`).

Events worth a line (admin changes, loads, unloads, evictions, errors) are logged with
`extra={"event": "<what>", <fields>}`: the JSON line carries those fields as keys, the text line as `key=value`
after the message. Every line also carries, when there is one, the request it belongs to: `request_id` (the
client's `x-request-id`, else one made up for this request) and `trace_id` / `span_id` (the current span, or,
with tracing off, the client's `traceparent`). A load runs in the task of the request that started it, so its
lines carry that request's ids. The warm path logs nothing at the default level (info).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from contextvars import ContextVar
from typing import Any, TextIO

from opentelemetry import trace

# Attributes every LogRecord has: whatever else a record holds came from `extra=` and goes into the line.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's message with terminal colours
}


class RequestScope:
    """What a log line needs to know of the request it is written for, found through `CURRENT`."""

    __slots__ = ("_headers", "_request_id")

    def __init__(self, headers: Any) -> None:
        # The request's headers as the front end got them: ASGI's [(bytes, bytes)] or gRPC's [(str, str|bytes)];
        # read only when a line is written.
        self._headers = headers
        self._request_id: str | None = None

    def header(self, name: str) -> str | None:
        key = name.encode()
        for k, v in self._headers or ():
            if k == key or k == name:
                return v.decode("latin-1") if isinstance(v, bytes) else str(v)
        return None

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = (self.header("x-request-id") or "")[:128] or os.urandom(8).hex()
        return self._request_id


CURRENT: ContextVar[RequestScope | None] = ContextVar("modelyard_request", default=None)


def correlation() -> dict[str, str]:
    """request_id, trace_id and span_id of the current request, those it has."""
    out: dict[str, str] = {}
    scope = CURRENT.get()
    if scope is not None:
        out["request_id"] = scope.request_id
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        out["trace_id"] = format(ctx.trace_id, "032x")
        out["span_id"] = format(ctx.span_id, "016x")
    elif scope is not None:
        parent = scope.header("traceparent")
        parts = parent.split("-") if parent else []
        if len(parts) == 4 and len(parts[1]) == 32:
            out["trace_id"] = parts[1]
    return out


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        for key, value in correlation().items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = {**_fields(record), **correlation()}
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


def resolve_format(fmt: str, stream: TextIO) -> str:
    """`auto`: json unless the stream is a terminal (a person reading), then text."""
    if fmt == "auto":
        return "text" if stream.isatty() else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"--log-format must be json, text or auto, got {fmt!r}")
    return fmt


def configure(level: str, fmt: str, stream: TextIO | None = None) -> str:
    """One handler on the root logger, for modelyard's, uvicorn's and the libraries' lines. Returns the format."""
    stream = stream or sys.stderr
    fmt = resolve_format(fmt, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call is noise
    return fmt
