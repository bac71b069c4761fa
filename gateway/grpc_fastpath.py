"""The warm fast path of the threaded gRPC server (`gateway.grpc_threads`): a warm `ModelInfer` or TF Serving
`Predict` answered in the server's thread, without the event loop.

A call takes it when nothing but a plain forward is to be done: the gateway is ready, tracing is off, the name is
a registered model of the method's runtime (not a route), the model has no hedge policy, the request is not part
of a sequence, and the local view has a ready copy on a backend with a gRPC endpoint. The copy is chosen as the
loop would (`Placer.warm_backend`, no Redis), and the request bytes go over a synchronous channel per backend
endpoint with the client's metadata (less what the gateway keeps, `grpc_dataplane.forward_metadata`) and the time
left of its deadline (less the same margin as the loop's path). The answer carries the same initial metadata,
and a backend's status passes through as it does there.

Everything else, and every answer the loop's path would handle further (NOT_FOUND: the copy may be gone;
UNAVAILABLE: retry on another copy), is `Bridge`d: the whole call goes to the loop's handler. Such an answer
was a request the backend did not serve, so sending it again is what the loop's path does too.

Thread safety: the thread only reads the view (dict and list reads; a view changing under the read raises, and
the call is bridged). Everything the call changes (requests in flight and last use, placement and backend
metrics, outlier ejection, the request's count, latency and log line) is posted to the loop (`LoopInbox`), in
order, so those objects stay loop-only. A request's in-flight mark therefore reaches the loop a moment after
it is sent, usually within a millisecond.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from adapters.base import ForwardResponse
from adapters.errors import BackendTimeout, ModelyardError
from adapters.grpc_forward import CHANNEL_OPTIONS, from_grpc_metadata, to_grpc_metadata
from gateway.dataplane import Answer
from gateway.errors import DeadlineExceeded, to_grpc
from gateway.grpc_dataplane import (
    DEADLINE_MARGIN_MAX,
    DEADLINE_MARGIN_SHARE,
    Forward,
    GrpcDataPlane,
    forward_metadata,
)
from gateway.grpc_dataplane import _answer_metadata as answer_metadata
from gateway.sequences import grpc_sequence
from placement.health import gateway_failure

log = logging.getLogger("modelyard.grpc")

FAST_OPS = frozenset({"ModelInfer", "Predict"})
_RUNTIME = {"kserve-grpc": "triton", "tfserving-grpc": "tfserving"}
# Backend answers the loop's path does more with than pass them on (adapters.triton / adapters.tfserving).
_BRIDGED_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE})
_NO_DEADLINE = 1e9  # seconds: more is the synchronous server's "no deadline"
_FAILED = frozenset({2, 4, 8, 13, 14})  # statuses counted as backend errors (gateway.observe)


class Bridge(Exception):
    """The fast path does not answer this call: the loop's handler does, from the start."""


class LoopInbox:
    """Calls posted from threads, run on the event loop in the order posted. One wake-up per batch: a post
    schedules the loop only when no drain is pending, so under load many posts share one."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._queue: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        self._queue.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False  # before draining: a post that sees it set is drained below
        queue = self._queue
        while queue:
            fn, args = queue.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("bookkeeping of a gRPC call failed")


class SyncChannels:
    """One synchronous grpc channel per backend endpoint, and its raw-bytes callables per method path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._methods: dict[tuple[str, str], Any] = {}

    def method(self, target: str, path: str) -> Any:
        found = self._methods.get((target, path))
        if found is not None:
            return found
        with self._lock:
            channel = self._channels.get(target)
            if channel is None:
                channel = self._channels[target] = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            found = self._methods[(target, path)] = channel.unary_unary(path)
        return found

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, {}
            self._methods.clear()
        for channel in channels.values():
            channel.close()


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    backend: str
    target: str


@dataclass(slots=True)
class Done:
    """One fast-path call, for the loop's bookkeeping."""

    path: str
    op: str
    protocol: str
    model: str
    backend: str
    metadata: Any
    seconds: float  # the whole call, as the client's request is timed
    backend_seconds: float
    status: int  # the backend's gRPC status number; -1: no answer in time
    code: str  # the status the client got
    error: str | None


class FastPath:
    def __init__(self, grpc_dp: GrpcDataPlane, inbox: LoopInbox, channels: SyncChannels) -> None:
        self.grpc_dp = grpc_dp
        self.dp = grpc_dp.dp
        self.inbox = inbox
        self.channels = channels
        self.taken = 0  # calls answered here (tests read it; a plain count, approximate across threads)

    def plan(self, method: Forward, op: str, body: bytes) -> Plan | None:
        """Where a fast-path call goes, or None when the loop's path must take it."""
        dp = self.dp
        if op not in FAST_OPS or not dp.ready or dp.obs.tracing.enabled:
            return None
        try:
            ref = method.read(body)
            view = dp.placer.view
            spec = view.models.get(ref.name)
            if spec is None or spec.hedge is not None or ref.name in view.routes:
                return None
            if spec.runtime != _RUNTIME.get(method.protocol) or (op == "ModelInfer" and grpc_sequence(body)):
                return None
            backend = dp.placer.warm_backend(ref.name)
            rec = view.backends.get(backend) if backend is not None else None
        except (ModelyardError, ValueError, RuntimeError, KeyError):  # bad request, or the view changed under us
            return None
        if backend is None or rec is None or not rec.spec.grpc_url:
            return None
        return Plan(ref.name, backend, rec.spec.grpc_url)

    def serve(
        self, plan: Plan, method: Forward, path: str, op: str, body: bytes, context: grpc.ServicerContext
    ) -> bytes:
        """Forward and answer, in this thread. Raises `Bridge` when the loop's path must take the call."""
        started = time.perf_counter()
        timeout = self.dp.settings.backend_timeout
        left = time_remaining(context)
        by_deadline = False
        if left is not None:
            left -= min(DEADLINE_MARGIN_MAX, left * DEADLINE_MARGIN_SHARE)
            if left <= 0:
                raise Bridge  # the loop's path says why, in its words
            if left < timeout:
                timeout, by_deadline = left, True
        metadata = context.invocation_metadata()
        usage = self.dp.placer.usage
        self.inbox.post(usage.start, plan.model, plan.backend)
        sent = time.perf_counter()
        try:
            response, call = self.channels.method(plan.target, path).with_call(
                body, metadata=to_grpc_metadata(forward_metadata(metadata)), timeout=timeout
            )
            resp = ForwardResponse(0, from_grpc_metadata(call.initial_metadata()), response)
        except grpc.RpcError as exc:
            code = exc.code()
            resp = ForwardResponse(
                code.value[0],
                from_grpc_metadata(exc.initial_metadata()),
                b"",
                exc.details() or code.name,
            )
        backend_seconds = time.perf_counter() - sent
        status = grpc.StatusCode.OK if resp.status == 0 else _code(resp.status)
        done = Done(
            path, op, method.protocol, plan.model, plan.backend, metadata, 0.0, backend_seconds, resp.status, "OK", None
        )
        try:
            if status in _BRIDGED_CODES:
                raise Bridge
            self.taken += 1
            if status is grpc.StatusCode.DEADLINE_EXCEEDED:
                done.status = -1
                raise _timeout(plan, op, timeout, by_deadline)
            context.send_initial_metadata(answer_metadata(Answer(resp, plan.model, plan.backend)))
            if resp.status != 0:
                done.code, done.error = status.name, resp.details
                context.abort(status, resp.details)
            return resp.body
        except ModelyardError as exc:
            err = to_grpc(exc)
            done.code, done.error = err.code.name, err.message
            context.abort(err.code, err.message)
            raise  # not reached: abort raises
        finally:
            done.seconds = time.perf_counter() - started
            self.inbox.post(self._account, done)

    def _account(self, done: Done) -> None:
        """On the loop: what `DataPlane.call` and `Observer` record of a warm call."""
        dp, obs = self.dp, self.dp.obs
        dp.placer.usage.finish(done.model, done.backend)
        if done.status == grpc.StatusCode.NOT_FOUND.value[0] or done.status == grpc.StatusCode.UNAVAILABLE.value[0]:
            # Bridged: the loop's path sends it again and counts the request; this try is a backend call.
            outcome = "unavailable" if done.status == grpc.StatusCode.UNAVAILABLE.value[0] else "not_loaded"
        else:
            outcome = "timeout" if done.status < 0 else "error" if done.status in _FAILED else "ok"
            obs.hit(done.model, done.backend)
            req = obs.begin("grpc", done.metadata, done.path[1:])
            req.model = done.model
            req.backend = done.backend
            req.started = time.perf_counter() - done.seconds
            obs.end(req, done.op, done.code, done.error)
        m = dp.metrics
        m.backend_latency.child(done.backend, done.protocol).observe(done.backend_seconds)
        m.backend_requests.child(done.backend, done.protocol, outcome).inc()
        if outcome != "timeout" and outcome != "not_loaded":
            failed = outcome == "unavailable" or gateway_failure(done.protocol, done.status)
            dp.placer.view.outliers.record(done.backend, not failed, len(dp.placer.view.backends))


def time_remaining(context: grpc.ServicerContext) -> float | None:
    """The call's time left, None without a deadline (the synchronous server says 9.2e18 s then, grpc.aio None)."""
    left: float = context.time_remaining()
    return left if left < _NO_DEADLINE else None


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def _timeout(plan: Plan, op: str, timeout: float, by_deadline: bool) -> ModelyardError:
    """As `DataPlane._forward` and `adapters.grpc_forward` word a backend that did not answer in time."""
    if by_deadline:
        return DeadlineExceeded(
            f"backend {plan.backend} did not answer {plan.model!r} within the client's deadline "
            f"({timeout:.3g} s were left)"
        )
    return BackendTimeout(f"backend {plan.backend} did not answer {op} over gRPC within {timeout:.3g} s", plan.backend)
