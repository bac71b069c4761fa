"""The data plane: one object that every protocol front end calls, whatever the protocol.

A call names a model (routes resolve to models here when traffic management lands). For a warm model the
path is: local view -> backend -> forward, with no Redis round trip. A cold model waits for a coalesced
load. A request that meets a model being unloaded (the backend says it does not hold it) is retried once
through placement, unseen by the client. Bodies are bytes: never parsed here.

A call may carry a deadline (gRPC clients send one): it bounds the whole call. The wait for a cold load
ends at the deadline (or the load timeout, whichever comes first) while the load itself goes on for later
requests, and the backend call gets only the time that is left. HTTP calls carry none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.base import ForwardRequest, ForwardResponse
from adapters.errors import BackendTimeout, ModelNotLoaded
from gateway.errors import BadRequest, DeadlineExceeded
from gateway.metrics import Metrics
from gateway.settings import Settings
from placement.errors import UnknownModel
from placement.placer import Placer

# Which runtime's models a protocol can call.
_RUNTIME_OF = {"kserve": "triton", "kserve-grpc": "triton", "tfserving": "tfserving", "tfserving-grpc": "tfserving"}
_HOW = {
    ("triton", False): "POST /v2/models/{m}/infer (KServe v2 over HTTP)",
    ("triton", True): "inference.GRPCInferenceService/ModelInfer (KServe v2 over gRPC)",
    ("tfserving", False): "POST /v1/models/{m}:predict (TF Serving REST)",
    ("tfserving", True): "tensorflow.serving.PredictionService/Predict (TF Serving gRPC)",
}


@dataclass(slots=True)
class Call:
    protocol: str  # "kserve" | "tfserving" (HTTP) | "kserve-grpc" (gRPC); see adapters.base.ForwardRequest
    method: str  # HTTP method, or the full gRPC method path
    name: str  # as the client called it: a model (or, later, a route)
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


@dataclass(slots=True)
class Answer:
    response: ForwardResponse
    model: str
    backend: str
    cold: bool = False
    hedged: bool = False


class DataPlane:
    def __init__(self, placer: Placer, settings: Settings, metrics: Metrics) -> None:
        self.placer = placer
        self.settings = settings
        self.metrics = metrics
        self.ready = False  # set once placement has its first view of Redis
        self._hit = metrics.placement.labels("hit")
        self._miss = metrics.placement.labels("miss")

    def resolve(self, name: str) -> str:
        if self.placer.model(name) is None:
            raise UnknownModel(
                f"no model or route named {name!r} is registered; register it with PUT /admin/models/{name}"
            )
        return name

    async def call(self, call: Call) -> Answer:
        model = self.resolve(call.name)
        self._check_protocol(call, model)
        backend = self.placer.warm_backend(model)
        cold = backend is None
        if backend is None:
            backend = await self._cold(model, call.deadline)
        else:
            self._hit.inc()
        try:
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
        return Answer(resp, model, backend, cold=cold)

    def _check_protocol(self, call: Call, model: str) -> None:
        spec = self.placer.model(model)
        if spec is None or _RUNTIME_OF.get(call.protocol, spec.runtime) == spec.runtime:
            return
        how = _HOW.get((spec.runtime, call.protocol.endswith("-grpc")), "its own API").format(m=model)
        raise BadRequest(f"model {model!r} runs on {spec.runtime}; call it with its own API: {how}")

    async def _cold(self, model: str, deadline: float | None) -> str:
        started = time.perf_counter()
        self._miss.inc()
        try:
            if deadline is None:
                return await self.placer.ensure(model)
            # The load is shielded inside `ensure`: when the deadline ends this wait, the load goes on.
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
        finally:
            self.metrics.cold_wait.observe(time.perf_counter() - started)

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
            return await self.placer.adapter(backend).forward(
                ForwardRequest(call.protocol, call.method, model, call.version, call.op, body, call.headers, timeout)
            )
        finally:
            usage.finish(model, backend)

    def model_servable(self, name: str) -> bool:
        """For readiness without a load: registered, and some usable backend of its runtime exists."""
        spec = self.placer.model(self.resolve(name))
        if spec is None:
            return False
        view = self.placer.view
        return any(r.spec.kind == spec.runtime and view.usable(b) for b, r in view.backends.items())
