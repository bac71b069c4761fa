"""What the gateway reports about its work, in one place: metrics, spans, per-backend stats and log lines.

The front ends wrap each data-plane request in `begin` / `end`; the data plane calls `resolved`, `hit`, `cold`
and `backend_call` on its way; the loader's `LoadEvents` hooks are `loaded`, `unloaded`, `evicted`, `joined`.
The request being served is found through a context variable (`gateway.logs.CURRENT`), so the data plane
needs no extra argument to say which request it works for, and log lines written meanwhile carry its ids.

The warm path costs: one small object and a context-variable set per request, a few dict lookups for cached
metric children (`gateway.metrics.Family`), and, with tracing off, one flag test per hook.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry.trace import Status, StatusCode

from adapters.errors import BackendTimeout, BackendUnavailable, ModelNotLoaded
from gateway.logs import CURRENT, RequestScope
from gateway.metrics import Metrics
from gateway.stats import BackendStats
from gateway.tracing import Tracing

log = logging.getLogger("modelyard.requests")

# gRPC codes that mean the server failed, not the request (OpenTelemetry's rule for server spans).
GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_GRPC_FAILED_STATUS = frozenset({2, 4, 8, 13, 14})  # backend answers that count as errors (UNKNOWN, ... UNAVAILABLE)


class Request(RequestScope):
    """One data-plane request, from `Observer.begin` to `Observer.end`."""

    __slots__ = ("_ctx", "_token", "backend", "model", "protocol", "route", "span", "started")

    def __init__(self, protocol: str, headers: Any) -> None:
        self._headers = headers
        self._request_id = None
        self.protocol = protocol
        self.started = time.perf_counter()
        self.model: str | None = None
        self.route = ""
        self.backend = ""
        self.span: Any = None
        self._ctx: object = None
        self._token: Any = None


class Observer:
    def __init__(self, metrics: Metrics, tracing: Tracing | None = None, stats: BackendStats | None = None) -> None:
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.stats = stats or BackendStats()
        self._cold_wait = metrics.cold_wait
        self._joins = metrics.load_joins
        # (protocol, op, code, route, model, backend) -> (request counter, latency histogram): one lookup per
        # request; emptied when a name loses its label (its children were removed).
        self._bound: dict[tuple[str, str, str, str, str, str], tuple[Any, Any]] = {}
        self._sent: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # (backend, api, outcome) -> same
        metrics.models.on_forget.append(lambda _name: self._bound.clear())
        metrics.routes.on_forget.append(lambda _name: self._bound.clear())

    # -- front ends ------------------------------------------------------------------------------------
    def begin(self, protocol: str, headers: Any, span_name: str = "") -> Request:
        """Start observing a request. `headers`: ASGI's or gRPC's, read only when needed (ids, traceparent)."""
        req = Request(protocol, headers)
        req._token = CURRENT.set(req)
        if self.tracing.enabled:
            incoming = {k: v for k in ("traceparent", "tracestate") if (v := req.header(k))}
            req.span, req._ctx = self.tracing.start_server(span_name or protocol, incoming, {})
        return req

    def end(self, req: Request, op: str, code: str, error: str | None = None, span_name: str = "") -> None:
        """Count and time the request; end its span; one log line when it failed (`code` an error status)."""
        seconds = time.perf_counter() - req.started
        m = self.metrics
        model = route = ""
        if req.model is not None:
            m.models.count(req.model)
            model = m.models.label(req.model)
            if req.route:
                m.routes.count(req.route)
                route = m.routes.label(req.route)
        key = (req.protocol, op, code, route, model, req.backend)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = (m.requests.child(*key), m.latency.child(req.protocol, op, model))
        bound[0].inc()
        bound[1].observe(seconds)
        if req.protocol == "grpc":
            failed, server_error = code != "OK", code in GRPC_SERVER_ERRORS
        else:  # HTTP statuses have three digits
            failed, server_error = code[0] >= "4", code[0] >= "5"
        if failed:
            fields = {
                "event": "request_failed",
                "protocol": req.protocol,
                "op": op,
                "code": code,
                "model": req.model,
                "route": req.route or None,
                "backend": req.backend or None,
                "seconds": round(seconds, 6),
            }
            log.log(logging.WARNING if server_error else logging.INFO, "%s", error or f"answered {code}", extra=fields)
        if req.span is not None:
            if span_name:
                req.span.update_name(span_name)
            attrs: dict[str, Any] = {"modelyard.request_id": req.request_id} if failed else {}
            if req.model is not None:
                attrs["modelyard.model"] = req.model
            if req.route:
                attrs["modelyard.route"] = req.route
            if req.backend:
                attrs["modelyard.backend"] = req.backend
            if req.protocol == "grpc":
                attrs["rpc.grpc.status_code_name"] = code
            else:
                attrs["http.response.status_code"] = int(code)
            self.tracing.end_server(req.span, req._ctx, attrs, (error or code) if server_error else None)
        CURRENT.reset(req._token)

    # -- the data plane --------------------------------------------------------------------------------
    @staticmethod
    def resolved(name: str, model: str) -> None:
        """The call to `name` is answered by `model` (a route when they differ)."""
        req = CURRENT.get()
        if isinstance(req, Request) and req.model is None:
            req.model = model
            if name != model:
                req.route = name

    def hit(self, model: str, backend: str) -> None:
        self.metrics.placement.child("hit", backend).inc()
        self.stats.add(backend, "hits")
        if self.tracing.enabled:
            self.tracing.instant(
                "modelyard.placement",
                {"modelyard.model": model, "modelyard.placement": "hit", "modelyard.backend": backend},
            )

    def cold(self, model: str) -> ColdWait:
        """`with observer.cold(model) as wait: wait.backend = await ensure(model)`: the miss, timed and traced."""
        return ColdWait(self, model)

    def backend_call(self, api: str, op: str, model: str, backend: str, headers: list[tuple[str, str]]) -> Sent:
        """`with observer.backend_call(...) as sent:` forward with `sent.headers`, then set `sent.status`."""
        return Sent(self, api, op, model, backend, headers)

    # -- placement.loader.LoadEvents hooks ------------------------------------------------------------
    def loaded(self, model: str, backend: str, seconds: float, ok: bool) -> None:
        result = "ok" if ok else "failed"
        self.metrics.loads.child(backend, result).inc()
        self.metrics.load_seconds.child(backend, result).observe(seconds)
        self.stats.add(backend, "loads" if ok else "load_failures")
        self.stats.note("load" if ok else "load_failed", model, backend, seconds=round(seconds, 3))
        if self.tracing.enabled:
            self.tracing.set_current({"modelyard.backend": backend, "modelyard.load.result": result})

    def unloaded(self, model: str, backend: str, reason: str, ok: bool) -> None:
        self.metrics.unloads.child(backend, reason, "ok" if ok else "failed").inc()

    def evicted(self, model: str, backend: str, idle_seconds: float) -> None:
        self.metrics.evictions.child(backend).inc()
        self.metrics.eviction_idle.child(backend).observe(idle_seconds)
        self.stats.add(backend, "evictions")
        self.stats.note("eviction", model, backend, idle_seconds=round(idle_seconds, 3))
        if self.tracing.enabled:
            self.tracing.event(
                "modelyard.evict",
                {"modelyard.model": model, "modelyard.backend": backend, "modelyard.idle_seconds": idle_seconds},
            )

    def prewarmed(self, model: str, result: str) -> None:
        """placement.prewarm_task.PrewarmTask.on_result: one pre-warm's outcome."""
        self.metrics.prewarm_loads.child(result).inc()

    def joined(self, model: str) -> None:
        self._joins.inc()
        if self.tracing.enabled:
            self.tracing.joined(model)


class ColdWait:
    __slots__ = ("_ctx", "_span", "_started", "backend", "model", "obs")

    def __init__(self, obs: Observer, model: str) -> None:
        self.obs = obs
        self.model = model
        self.backend = ""
        self._span: Any = None
        self._ctx: object = None
        self._started = 0.0

    def __enter__(self) -> ColdWait:
        self._started = time.perf_counter()
        if self.obs.tracing.enabled:
            # Current while the request waits, so the load task it starts is its child and a join links from it.
            self._span, self._ctx = self.obs.tracing.start_current(
                "modelyard.placement", {"modelyard.model": self.model, "modelyard.placement": "miss"}
            )
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        obs = self.obs
        obs._cold_wait.observe(time.perf_counter() - self._started)
        obs.metrics.placement.child("miss", self.backend).inc()
        if self.backend:
            obs.stats.add(self.backend, "misses")
            req = CURRENT.get()
            if isinstance(req, Request) and req.model == self.model:
                req.backend = self.backend
        if self._span is not None:
            if self.backend:
                self._span.set_attribute("modelyard.backend", self.backend)
            obs.tracing.end_current(self._span, self._ctx, exc)


class Sent:
    """One backend call being observed: its latency, outcome and CLIENT span; `headers` carry its traceparent."""

    __slots__ = ("_span", "_started", "api", "backend", "headers", "model", "obs", "op", "status")

    def __init__(
        self, obs: Observer, api: str, op: str, model: str, backend: str, headers: list[tuple[str, str]]
    ) -> None:
        self.obs = obs
        self.api = api
        self.op = op
        self.model = model
        self.backend = backend
        self.headers = headers
        self.status: int | None = None
        self._span: Any = None
        self._started = 0.0

    def __enter__(self) -> Sent:
        self._started = time.perf_counter()
        req = CURRENT.get()
        if isinstance(req, Request) and req.model == self.model:
            req.backend = self.backend
        tracing = self.obs.tracing
        if tracing.enabled:
            self._span = tracing.start_client(
                "modelyard.backend",
                {
                    "modelyard.model": self.model,
                    "modelyard.backend": self.backend,
                    "modelyard.api": self.api,
                    "modelyard.op": self.op,
                },
            )
            self.headers = tracing.inject(self._span, self.headers)
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        seconds = time.perf_counter() - self._started
        if exc is None:
            status = self.status or 0
            grpc = self.api.endswith("-grpc")
            outcome = "error" if (status in _GRPC_FAILED_STATUS if grpc else status >= 500) else "ok"
        elif isinstance(exc, ModelNotLoaded):
            outcome = "not_loaded"
        elif isinstance(exc, BackendTimeout):
            outcome = "timeout"
        elif isinstance(exc, BackendUnavailable):
            outcome = "unavailable"
        else:
            outcome = "cancelled"  # a hedge that lost its race, or the client went away
        key = (self.backend, self.api, outcome)
        bound = self.obs._sent.get(key)
        if bound is None:
            m = self.obs.metrics
            bound = self.obs._sent[key] = (
                m.backend_latency.child(self.backend, self.api),
                m.backend_requests.child(*key),
            )
        bound[0].observe(seconds)
        bound[1].inc()
        span = self._span
        if span is not None:
            if self.status is not None:
                attr = "rpc.grpc.status_code" if self.api.endswith("-grpc") else "http.response.status_code"
                span.set_attribute(attr, self.status)
            span.set_attribute("modelyard.outcome", outcome)
            if outcome not in ("ok", "cancelled"):
                span.set_status(Status(StatusCode.ERROR, f"{outcome}: {exc}" if exc else outcome))
            span.end()
