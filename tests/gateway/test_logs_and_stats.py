"""The log formats and the per-backend stats of the live page, without a gateway."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.logs import CURRENT, JsonFormatter, RequestScope, TextFormatter, configure, resolve_format
from gateway.stats import BackendStats


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("modelyard.placement", logging.INFO, __file__, 1, "loaded %s", ("m1",), None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_carries_the_events_fields_and_the_requests_ids() -> None:
    token = CURRENT.set(
        RequestScope([(b"x-request-id", b"abc-1"), (b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")])
    )
    try:
        line = json.loads(JsonFormatter().format(record(event="load", model="m1", seconds=1.5)))
    finally:
        CURRENT.reset(token)
    assert line["msg"] == "loaded m1" and line["level"] == "info" and line["logger"] == "modelyard.placement"
    assert (line["event"], line["model"], line["seconds"]) == ("load", "m1", 1.5)
    assert line["request_id"] == "abc-1" and line["trace_id"] == "a" * 32  # tracing off: the client's trace
    assert line["ts"].endswith("+00:00")


def test_the_current_span_gives_the_trace_id_and_a_request_without_id_gets_one() -> None:
    tracer = TracerProvider().get_tracer("t")
    token = CURRENT.set(RequestScope([]))
    try:
        with tracer.start_as_current_span("s") as span:
            line = json.loads(JsonFormatter().format(record()))
            again = json.loads(JsonFormatter().format(record()))
    finally:
        CURRENT.reset(token)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert len(line["request_id"]) == 16 and again["request_id"] == line["request_id"]  # one id per request
    assert "request_id" not in json.loads(JsonFormatter().format(record()))  # no request: no id


def test_text_lines_put_the_fields_after_the_message() -> None:
    text = TextFormatter().format(record(event="eviction", model="m1"))
    assert text.endswith("modelyard.placement: loaded m1 event=eviction model=m1")


def test_auto_is_json_unless_a_terminal_reads_it() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("auto", Tty()) == "text"
    with pytest.raises(ValueError):
        resolve_format("xml", io.StringIO())
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert configure("warning", "auto", out) == "json"
        logging.getLogger("modelyard.x").info("quiet")
        logging.getLogger("modelyard.x").warning("loud", extra={"event": "e"})
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["msg"] == "loud"


def test_rates_are_per_minute_over_the_last_minute() -> None:
    now = [1000.0]
    stats = BackendStats(window=60, every=10, clock=lambda: now[0], wall=lambda: 5.0)
    for _ in range(3):
        stats.add("b1", "hits")
    stats.add("b1", "misses")
    now[0] += 30  # half a minute since the start: rates over those 30 s
    rates = stats.rates()
    assert rates["window_seconds"] == 30
    assert rates["backends"]["b1"]["hits_per_minute"] == 6.0 and rates["backends"]["b1"]["hit_ratio"] == 0.75
    for _ in range(12):  # two minutes with one miss every 10 s: the early hits leave the window
        now[0] += 10
        stats.add("b1", "misses")
        stats.snapshot()
    rates = stats.rates()
    assert rates["window_seconds"] == 60
    assert rates["backends"]["b1"]["misses_per_minute"] == 6.0 and rates["backends"]["b1"]["hit_ratio"] == 0.0
    assert rates["all"]["totals"]["hits"] == 3
    stats.note("eviction", "m1", "b1", idle_seconds=2.0)
    assert stats.rates()["recent"] == [
        {"t": 5.0, "kind": "eviction", "model": "m1", "backend": "b1", "idle_seconds": 2.0}
    ]
