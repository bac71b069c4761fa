"""OpenTelemetry traces of the data plane, on a tracer provider passed in (none: tracing is off).

A request's spans (names and attributes are in docs/metrics.md, "Traces"):

    POST /v2/models/{model}/infer                 SERVER: one per data-plane request (gRPC: the method path)
    ├── modelyard.placement                       the placement decision (hit: instant; miss: the cold wait)
    │   └── modelyard.load                        the coalesced load, in the task of the request that started it;
    │                                             requests that joined it link to it; evictions are its events
    └── modelyard.backend                         CLIENT: each call to a backend (retries, hedges: one each)

An incoming W3C `traceparent` is continued, and each backend call carries its own span's `traceparent` (HTTP
header or gRPC metadata; the client's `traceparent` / `tracestate` are replaced by the gateway's).

Off (`Tracing()` with no provider, the default without `OTEL_EXPORTER_OTLP_ENDPOINT`): `enabled` is False, the
data plane checks that flag and creates no span at all, and the client's `traceparent` goes to the backend as
it came, so the backend still joins the client's trace.

For code that adds its own spans (hedges, shadows): `span(name, attributes)` is a context manager for a child of
the current span; work done later in another task (a shadow queue) takes `capture()` at submit time and passes
it as `parent=` (or as a link, `links=[...]`, to start a trace of its own that points back at the request).
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

T = TypeVar("T")
PROPAGATED = ("traceparent", "tracestate")
JOINED = {"modelyard.link": "joined_load"}
_INVALID = NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)


class Tracing:
    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = (
            provider.get_tracer("modelyard", "0.1.0") if provider is not None else trace.NoOpTracer()
        )
        self.propagator = TraceContextTextMapPropagator()
        self._loads: dict[str, SpanContext] = {}  # model -> span of the load under way in this process
        # Spans of requests that joined a load whose task had not started yet: linked when its span starts.
        self._early: dict[str, list[Span]] = {}

    # -- front ends ------------------------------------------------------------------------------------
    def start_server(self, name: str, incoming: Mapping[str, str], attributes: dict[str, Any]) -> tuple[Span, object]:
        """Start a request's SERVER span, continuing `incoming`'s traceparent, and make it current.
        Returns the span and the token `end_server` detaches."""
        parent = self.propagator.extract(incoming) if incoming else None
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end_server(span: Span, token: object, attributes: dict[str, Any], error: str | None) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        span.set_attributes(attributes)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    # -- the data plane --------------------------------------------------------------------------------
    def instant(self, name: str, attributes: dict[str, Any]) -> None:
        """A span that starts and ends now (the placement decision of a warm request: a dictionary lookup)."""
        self.tracer.start_span(name, attributes=attributes).end()

    def start_current(self, name: str, attributes: dict[str, Any]) -> tuple[Span, object]:
        span = self.tracer.start_span(name, attributes=attributes)
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end_current(span: Span, token: object, error: BaseException | None) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    def start_client(self, name: str, attributes: dict[str, Any]) -> Span:
        return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def inject(self, span: Span, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """`headers` with the client's traceparent/tracestate replaced by those of `span` (a backend call)."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        out = [(k, v) for k, v in headers if k not in PROPAGATED]
        out.extend(carrier.items())
        return out

    # -- loads (placement.loader.LoadEvents hooks) -----------------------------------------------------
    async def wrap_load(self, model: str, load: Coroutine[Any, Any, T]) -> T:
        """Run one coalesced load inside its span. The load's task was created in the context of the request
        that started it, so the span is a child of that request's placement span."""
        with self.tracer.start_as_current_span("modelyard.load", attributes={"modelyard.model": model}) as span:
            self._loads[model] = ctx = span.get_span_context()
            for joiner in self._early.pop(model, ()):
                joiner.add_link(ctx, JOINED)
            try:
                return await load
            finally:
                self._loads.pop(model, None)

    def joined(self, model: str) -> None:
        """A request joined the load under way: its current span (placement) links to the load's span."""
        load = self._loads.get(model)
        span = trace.get_current_span()
        if load is not None:
            span.add_link(load, JOINED)
        elif span.is_recording():  # the load's task has not run yet: link when its span starts
            self._early.setdefault(model, []).append(span)

    @staticmethod
    def event(name: str, attributes: dict[str, Any]) -> None:
        """An event on the current span (an eviction on the load's span; nothing when no span is recording)."""
        trace.get_current_span().add_event(name, attributes)

    @staticmethod
    def set_current(attributes: dict[str, Any]) -> None:
        trace.get_current_span().set_attributes(attributes)

    # -- for hedges, shadows and other code of the data plane ------------------------------------------
    @contextlib.contextmanager
    def span(
        self,
        name: str,
        attributes: dict[str, Any] | None = None,
        *,
        parent: Context | None = None,
        links: Sequence[SpanContext] = (),
    ) -> Iterator[Span]:
        """A span around a block, current inside it (a no-op span when tracing is off)."""
        if not self.enabled:
            yield _INVALID
            return
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            attributes=attributes,
            links=[Link(link) for link in links],
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:  # not CancelledError: a hedge that lost its race did nothing wrong
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    def capture(self) -> Context | None:
        """The current context, to parent work done later in another task (None when tracing is off)."""
        return otel_context.get_current() if self.enabled else None

    def current_span_context(self) -> SpanContext | None:
        ctx = trace.get_current_span().get_span_context()
        return ctx if ctx.is_valid else None

    def shutdown(self) -> None:
        """Export what is buffered and stop (the process is ending)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def provider_from_env(env: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting OTLP over HTTP/protobuf when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, else None. The exporter reads the other standard
    `OTEL_EXPORTER_OTLP_*` variables (headers, timeout, certificate) itself, the provider `OTEL_TRACES_SAMPLER`,
    and the batch processor `OTEL_BSP_*`. Raises ValueError for settings modelyard can't honour."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    if protocol.strip() not in ("", "http/protobuf"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: modelyard exports traces with OTLP over HTTP/protobuf only "
            "(a collector's port 4318); unset it or set it to http/protobuf"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "modelyard"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
