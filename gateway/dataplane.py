"""The data plane: one object that every protocol front end calls, whatever the protocol.

A call names a model or a route. A route resolves to one of its models here (`gateway.routing`): by weight,
by a sticky header, or by `x-modelyard-target`. For a warm model the path is: local view -> backend -> forward,
with no Redis round trip. A cold model waits for a coalesced load. Bodies are bytes: never parsed here.

Around the forward, and only for calls that are safe to repeat:
- a request that meets a model being unloaded (the backend says it does not hold it) is retried once through
  placement, unseen by the client;
- a request whose backend refused or dropped the connection, or answered 503 (gRPC UNAVAILABLE), is retried
  once on another ready copy, within a retry budget (`gateway.hedging.RetryBudget`); a backend that refused a
  connection gets no more requests from this gateway until its health check passes again;
- under a hedge policy (the route's, else the model's) and with ready copies on two backends, an inference
  request still unanswered after the policy's delay is sent to the second copy too; the first good answer
  wins, the other is cancelled, and a budget holds hedges to a share of the requests (`gateway.hedging`);
- a route's shadows get their share of its inference requests after the primary answered, through a bounded
  queue (`gateway.shadows`): they never delay, fail or change the client's answer.

A call may carry a deadline (gRPC clients send one): it bounds the whole call. The wait for a cold load
ends at the deadline (or the load timeout, whichever comes first) while the load itself goes on for later
requests, and the backend call gets only the time that is left. HTTP calls carry none.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.context import Context

from adapters.base import ForwardRequest, ForwardResponse
from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable, ModelNotLoaded
from gateway.errors import BadRequest, DeadlineExceeded
from gateway.hedging import HedgeBudget, LatencyWindow, RetryBudget, race
from gateway.metrics import Metrics
from gateway.observe import Observer
from gateway.routing import HeaderLookup, Router, no_headers
from gateway.settings import Settings
from gateway.shadows import ShadowJob, Shadows
from gateway.tracing import Tracing
from placement.errors import UnknownModel
from placement.health import gateway_failure
from placement.placer import Placer
from placement.records import HedgePolicy, RouteSpec
from placement.route_stats import RouteStats

log = logging.getLogger("modelyard.dataplane")

# Which runtime's models a protocol can call.
_RUNTIME_OF = {"kserve": "triton", "kserve-grpc": "triton", "tfserving": "tfserving", "tfserving-grpc": "tfserving"}
_HOW = {
    ("triton", False): "POST /v2/models/{m}/infer (KServe v2 over HTTP)",
    ("triton", True): "inference.GRPCInferenceService/ModelInfer (KServe v2 over gRPC)",
    ("tfserving", False): "POST /v1/models/{m}:predict (TF Serving REST)",
    ("tfserving", True): "tensorflow.serving.PredictionService/Predict (TF Serving gRPC)",
}
# Whole requests that are safe to send twice (inference has no side effects on the backend): only these are
# hedged and shadowed. Every call may be retried when the backend refused it, since it was not processed.
REPEATABLE_OPS = frozenset({"infer", "predict", "classify", "regress", "ModelInfer", "Predict", "Classify", "Regress"})
# gRPC status numbers that mean the backend failed, not the request: such an answer loses a hedge race.
_GRPC_FAILED = frozenset({2, 4, 8, 13, 14})  # UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE
_GRPC_UNAVAILABLE = 14


def _failed(protocol: str, status: int) -> bool:
    return status in _GRPC_FAILED if protocol.endswith("-grpc") else status >= 500


def _unavailable(protocol: str, status: int) -> bool:
    return status == (_GRPC_UNAVAILABLE if protocol.endswith("-grpc") else 503)


@dataclass(slots=True)
class Call:
    protocol: str  # "kserve" | "tfserving" (HTTP) | "kserve-grpc" (gRPC); see adapters.base.ForwardRequest
    method: str  # HTTP method, or the full gRPC method path
    name: str  # as the client called it: a model or a route
    version: str | None
    op: str
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # When the answer is due, on the event loop's clock (`loop.time()`); None: no deadline but the gateway's own.
    deadline: float | None = None
    # For protocols that name the model inside the body (gRPC): `rewrite(body, model)` is the body naming
    # `model` instead, used when the model that answers is not the name called (routes). None: the adapter
    # puts the model in the path (HTTP), so the body never changes.
    rewrite: Callable[[bytes, str], bytes] | None = None
    # Any request header (HTTP) or metadata (gRPC) by lower-case name, for routes: x-modelyard-target and a
    # route's sticky header. Front ends pass a lookup rather than a dict, so calls to models build nothing.
    header: HeaderLookup = no_headers


@dataclass(slots=True)
class Answer:
    response: ForwardResponse
    model: str
    backend: str
    cold: bool = False
    hedged: bool = False


class DataPlane:
    def __init__(
        self,
        placer: Placer,
        settings: Settings,
        metrics: Metrics,
        rng: random.Random | None = None,
        obs: Observer | None = None,
    ) -> None:
        self.placer = placer
        self.settings = settings
        self.metrics = metrics
        self.synced = False  # set once placement has its first view of Redis
        self.draining = False  # set on SIGTERM: readiness goes false while requests in flight finish
        # Metrics, spans and log lines of each request (gateway.observe); `tracing.span(...)` for code that adds
        # spans of its own.
        self.obs = obs or Observer(metrics)
        self.tracing: Tracing = self.obs.tracing
        self.rng = rng or random.Random()
        self.router = Router(self.rng)
        # Per route and model outcomes, for rollout gates and the shadow report (flushed by placement.rollouts).
        self.route_stats = RouteStats()
        self.shadows = Shadows(
            placer.warm_backend, metrics, settings.shadow_queue, settings.shadow_concurrency, self.route_stats
        )
        self.retry_budget = RetryBudget(settings.retry_budget_percent, settings.retry_budget_min)
        self._hedge_budgets: dict[str, HedgeBudget] = {}
        self._latencies: dict[str, LatencyWindow] = {}
        self._hedges = {r: metrics.hedges.labels(r) for r in ("sent", "won", "refused_budget", "no_copy")}
        placer.view.outliers.on_eject = self._ejected

    def _ejected(self, backend: str, seconds: float) -> None:
        """Passive outlier ejection (placement.health) took `backend` out of this gateway's rotation."""
        self.metrics.ejections.labels(backend).inc()
        log.warning("backend %s ejected from this gateway's rotation for %.0f s: failures in a row", backend, seconds)

    def _outcome(self, backend: str, ok: bool) -> None:
        self.placer.view.outliers.record(backend, ok, len(self.placer.view.backends))

    async def aclose(self) -> None:
        await self.shadows.aclose()

    @property
    def ready(self) -> bool:
        """Ready to serve: the view was synced from Redis once (it stays so while Redis is unreachable: warm
        models are served from the view), and the gateway is not draining (SIGTERM)."""
        return self.synced and not self.draining

    @ready.setter
    def ready(self, value: bool) -> None:
        self.synced = value

    async def resolve_known(self, name: str, header: HeaderLookup = no_headers) -> str:
        """`resolve`, after looking a name this gateway has not heard of up in Redis (cold path only)."""
        if not self.placer.lookup.known(name):
            await self.placer.lookup.find(name)
        return self.resolve(name, header)

    def resolve(self, name: str, header: HeaderLookup = no_headers) -> str:
        """The model that answers a call to `name` (a model, or a route resolved for these headers)."""
        route = self.placer.view.routes.get(name)
        if route is not None:
            return self.router.choose(route, header, self.placer.view.models)
        if self.placer.model(name) is None:
            raise UnknownModel(
                f"no model or route named {name!r} is registered; register it with PUT /admin/models/{name}"
            )
        return name

    async def call(self, call: Call) -> Answer:
        route = self.placer.view.routes.get(call.name)
        if route is None and self.placer.model(call.name) is None and await self.placer.lookup.find(call.name):
            route = self.placer.view.routes.get(call.name)  # created through another gateway, event not here yet
        model = self.resolve(call.name, call.header)
        self.obs.resolved(call.name, model)
        self._check_protocol(call, model)
        spec = self.placer.model(model)
        policy = route.hedge if route is not None and route.hedge is not None else spec.hedge if spec else None
        if route is not None:
            self.metrics.route_requests.labels(route.name, model).inc()
        self.retry_budget.active += 1
        started = asyncio.get_running_loop().time()
        failed = True
        try:
            answer = await self._call_model(call, model, policy, route.name if route is not None else model)
            failed = _failed(call.protocol, answer.response.status)
        except BadRequest:
            failed = False  # the client's fault, not the model's
            raise
        finally:
            self.retry_budget.active -= 1
            took = asyncio.get_running_loop().time() - started
            if route is not None and call.op in REPEATABLE_OPS:
                self.route_stats.record(route.name, model, failed, took)
        if route is not None and route.shadows and call.op in REPEATABLE_OPS:
            self._shadow(call, route, answer, took)
        return answer

    async def _call_model(self, call: Call, model: str, policy: HedgePolicy | None, key: str) -> Answer:
        backend = self.placer.warm_backend(model)
        cold = backend is None
        if backend is None:
            backend = await self._cold(model, call.deadline)
        else:
            self.obs.hit(model, backend)
        hedged = False
        try:
            if policy is not None and not cold and call.op in REPEATABLE_OPS:
                resp, backend, hedged = await self._hedged(call, model, backend, policy, key)
            else:
                resp = await self._forward(call, model, backend)
        except ModelNotLoaded:
            # The copy went away under us (evicted by another gateway, or the backend restarted): once more.
            self.metrics.retries.labels("model_not_loaded").inc()
            await self.placer.copy_missing(model, backend)
            retry = self.placer.warm_backend(model, exclude=(backend,))
            if retry is None:
                retry = await self._cold(model, call.deadline)
                cold = True
            backend = retry
            resp = await self._forward(call, model, backend)
        except BackendUnavailable as exc:
            if isinstance(exc, BackendRefused) and self.placer.view.reachable.get(backend, True):
                # Nothing listens there: stop sending it requests until its health check passes again.
                log.warning("backend %s refused a connection; out of rotation until it is healthy: %s", backend, exc)
                self.placer.view.reachable[backend] = False
            retried = await self._retry(call, model, backend, "unavailable")
            if retried is None:
                raise
            resp, backend = retried
        else:
            if _unavailable(call.protocol, resp.status):
                retried = await self._retry(call, model, backend, "status_503")
                if retried is not None:
                    resp, backend = retried
        return Answer(resp, model, backend, cold=cold, hedged=hedged)

    async def _retry(self, call: Call, model: str, failed: str, reason: str) -> tuple[ForwardResponse, str] | None:
        """Send the call once more to another ready copy, within the retry budget; None when it can't be."""
        other = self.placer.warm_backend(model, exclude=(failed,))
        if other is None:
            self.metrics.retries_refused.labels("no_copy").inc()
            return None
        if not self.retry_budget.try_acquire():
            self.metrics.retries_refused.labels("budget").inc()
            return None
        self.metrics.retries.labels(reason).inc()
        try:
            return await self._forward(call, model, other), other
        finally:
            self.retry_budget.release()

    async def _hedged(
        self, call: Call, model: str, backend: str, policy: HedgePolicy, key: str
    ) -> tuple[ForwardResponse, str, bool]:
        """Forward, and hedge on a second copy when the first is slower than the policy's delay."""
        budget = self._hedge_budgets.get(key)
        if budget is None:
            budget = self._hedge_budgets[key] = HedgeBudget(self.placer.clock, self.settings.hedge_window)
        budget.request()
        latencies = self._latencies.get(model)
        if latencies is None:
            latencies = self._latencies[model] = LatencyWindow(
                self.settings.latency_window, self.settings.latency_min_samples
            )
        delay = policy.after_ms / 1000 if policy.after_ms is not None else latencies.p95()
        if delay is None or len(self.placer.view.ready_backends(model)) < 2:
            return await self._timed(call, model, backend, latencies), backend, False
        second: list[str] = []

        def hedge() -> Awaitable[ForwardResponse] | None:
            other = self.placer.warm_backend(model, exclude=(backend,))
            if other is None:
                self._hedges["no_copy"].inc()
                return None
            if not budget.try_hedge(policy.max_extra_percent):
                self._hedges["refused_budget"].inc()
                return None
            self._hedges["sent"].inc()
            second.append(other)
            return self._hedge_leg(call, model, other, latencies)

        resp, who = await race(
            lambda: self._timed(call, model, backend, latencies),
            hedge,
            delay,
            lambda r: not _failed(call.protocol, r.status),
        )
        if who == 1:
            self._hedges["won"].inc()
            return resp, second[0], True
        return resp, backend, False

    async def _hedge_leg(self, call: Call, model: str, backend: str, latencies: LatencyWindow) -> ForwardResponse:
        """The second copy's call of a hedged request, in a span of its own (its backend call is a child)."""
        with self.tracing.span("modelyard.hedge", {"modelyard.model": model, "modelyard.backend": backend}):
            return await self._timed(call, model, backend, latencies)

    async def _timed(self, call: Call, model: str, backend: str, latencies: LatencyWindow) -> ForwardResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self._forward(call, model, backend)
        finally:
            # Cancelled losers count too, with the time they had run: a lower bound of their latency.
            latencies.add(loop.time() - started)

    def _shadow(self, call: Call, route: RouteSpec, answer: Answer, took: float | None = None) -> None:
        parent = self.tracing.capture()  # the shadow is sent later, by a worker: its span goes under this request
        for shadow in route.shadows:
            if shadow.percent < 100 and self.rng.random() * 100 >= shadow.percent:
                continue
            model = shadow.model

            def send(backend: str, model: str = model) -> Awaitable[ForwardResponse]:
                return self._shadow_send(call, model, backend, route.name, parent)

            self.shadows.submit(ShadowJob(route.name, model, send, call.protocol, answer.response, took))

    async def _shadow_send(
        self, call: Call, model: str, backend: str, route: str, parent: Context | None
    ) -> ForwardResponse:
        attributes = {"modelyard.route": route, "modelyard.model": model, "modelyard.backend": backend}
        with self.tracing.span("modelyard.shadow", attributes, parent=parent):
            return await self._send(call, model, backend, self.settings.backend_timeout)

    def _check_protocol(self, call: Call, model: str) -> None:
        spec = self.placer.model(model)
        if spec is None or _RUNTIME_OF.get(call.protocol, spec.runtime) == spec.runtime:
            return
        how = _HOW.get((spec.runtime, call.protocol.endswith("-grpc")), "its own API").format(m=model)
        raise BadRequest(f"model {model!r} runs on {spec.runtime}; call it with its own API: {how}")

    async def _cold(self, model: str, deadline: float | None) -> str:
        with self.obs.cold(model) as wait:
            wait.backend = await self._wait_for_load(model, deadline)
            return wait.backend

    async def _wait_for_load(self, model: str, deadline: float | None) -> str:
        if deadline is None:
            return await self.placer.ensure(model)
        # The load is shielded inside `ensure`: when the deadline ends this wait, the load goes on.
        started = time.perf_counter()
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await self.placer.ensure(model)
        except TimeoutError:
            if not timeout.expired():
                raise
            raise DeadlineExceeded(
                f"the client's deadline passed while model {model!r} was loading "
                f"(waited {time.perf_counter() - started:.3g} s); the load goes on, so a later request "
                "will find it sooner or ready: retry, or give the call a longer deadline"
            ) from None

    async def _forward(self, call: Call, model: str, backend: str) -> ForwardResponse:
        timeout = self.settings.backend_timeout
        if call.deadline is not None:
            left = call.deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise DeadlineExceeded(f"the client's deadline passed before the request for {model!r} was sent")
            if left < timeout:
                return await self._forward_until_deadline(call, model, backend, left)
        return await self._send(call, model, backend, timeout)

    async def _forward_until_deadline(self, call: Call, model: str, backend: str, left: float) -> ForwardResponse:
        try:
            return await self._send(call, model, backend, left)
        except BackendTimeout as exc:
            raise DeadlineExceeded(
                f"backend {backend} did not answer {model!r} within the client's deadline ({left:.3g} s were left)"
            ) from exc

    async def _send(self, call: Call, model: str, backend: str, timeout: float) -> ForwardResponse:
        body = call.body
        if call.rewrite is not None and model != call.name:
            body = call.rewrite(body, model)
        usage = self.placer.usage
        usage.start(model, backend)
        try:
            with self.obs.backend_call(call.protocol, call.op, model, backend, call.headers) as sent:
                request = ForwardRequest(
                    call.protocol, call.method, model, call.version, call.op, body, sent.headers, timeout
                )
                try:
                    resp = await self.placer.adapter(backend).forward(request)
                except BackendUnavailable:  # not BackendTimeout: a slow model is not a failing backend
                    self._outcome(backend, False)
                    raise
                sent.status = resp.status
                self._outcome(backend, not gateway_failure(call.protocol, resp.status))
                return resp
        finally:
            usage.finish(model, backend)

    def model_servable(self, name: str) -> bool:
        """For readiness without a load: registered, and some usable backend of its runtime exists."""
        spec = self.placer.model(self.resolve(name))
        if spec is None:
            return False
        view = self.placer.view
        return any(r.spec.kind == spec.runtime and view.usable(b) for b, r in view.backends.items())
