"""Shadow traffic: copies of a route's requests sent to other models, whose answers are compared and dropped.

A shadow never touches the client's answer: the data plane submits it only after the primary answered, and
the job waits in a bounded queue for one of a fixed number of workers (per gateway). When the workers fall
behind and the queue is full, new shadows are dropped and counted, never queued without bound. Shadows go
only to a model that has a ready copy: a cold shadow model is dropped and counted, not loaded, so shadow
traffic can never evict a production model. Warm it with `POST /admin/models/{name}/load`, or keep it with
`min_copies: 1`.

Agreement: the shadow agrees when it answered with the primary's status and, for a successful answer, the same
result. Identical bytes agree. Otherwise the parts that name the model are set aside: KServe JSON compares
`outputs` (and the binary tensor data after the JSON header), TF Serving REST `predictions` / `outputs` /
`results`, and gRPC answers every top-level field but the model's name, version and request id (KServe
`ModelInferResponse` fields 1-3; TF Serving's `model_spec`, field 2). Two error answers with the same status
agree: both models refused the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.base import ForwardResponse
from adapters.errors import ModelyardError
from adapters.protowire import WireError, records
from gateway.logs import CURRENT, RequestScope
from gateway.metrics import Metrics
from placement.route_stats import Disagreement, RouteStats, clip

log = logging.getLogger("modelyard.shadows")

# Top-level fields of each protocol's answers that name the model or the request, not the result.
_GRPC_NAMING_FIELDS = {"kserve-grpc": frozenset({1, 2, 3}), "tfserving-grpc": frozenset({2})}
_GRPC_FAILED = frozenset({2, 4, 8, 13, 14})  # gRPC codes that mean the model failed, not the request


@dataclass(slots=True)
class ShadowJob:
    route: str
    model: str
    send: Callable[[str], Awaitable[ForwardResponse]]  # the request, sent to a backend holding `model`
    protocol: str
    primary: ForwardResponse
    primary_seconds: float | None = None  # how long the primary took, for the comparison report
    request: RequestScope | None = None  # the client's request (its id goes with a disagreement)


class Shadows:
    """The per-gateway shadow queue and its workers, started on first use (no task at construction)."""

    def __init__(
        self,
        pick: Callable[[str], str | None],
        metrics: Metrics,
        queue_size: int = 256,
        concurrency: int = 16,
        stats: RouteStats | None = None,
    ) -> None:
        self.pick = pick  # a backend holding a ready copy of a model, or None (no I/O)
        self.metrics = metrics
        # The comparison report's counts, flushed to Redis in batches by placement.rollouts.
        self.stats = stats or RouteStats()
        self.queue_size = queue_size
        self.concurrency = concurrency
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self._workers: list[asyncio.Task[None]] = []

    def submit(self, job: ShadowJob) -> bool:
        """Queue a shadow; False (dropped and counted) when the queue is full."""
        if self._queue is None:
            self._queue = asyncio.Queue(self.queue_size)
            self._workers = [
                # An empty context: the workers outlive the request that starts them, whose ids (logs) and span
                # (traces) must not stick to every later shadow; each job brings its request's trace context.
                asyncio.create_task(
                    self._work(self._queue), name=f"modelyard-shadow-{i}", context=contextvars.Context()
                )
                for i in range(self.concurrency)
            ]
        if job.request is None:
            job.request = CURRENT.get()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels(job.route, "queue_full").inc()
            self.stats.record_shadow(job.route, job.model, "dropped")
            return False
        return True

    async def join(self) -> None:
        """Wait until every queued shadow was sent and compared (for tests and shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        self._queue = None

    async def _work(self, queue: asyncio.Queue[ShadowJob]) -> None:
        while True:
            job = await queue.get()
            try:
                await self._one(job)
            except Exception:  # a bug here must not stop the worker
                log.exception("shadow of route %s to %s failed", job.route, job.model)
            finally:
                queue.task_done()

    async def _one(self, job: ShadowJob) -> None:
        backend = self.pick(job.model)
        if backend is None:
            self.metrics.shadow_dropped.labels(job.route, "cold").inc()
            self.stats.record_shadow(job.route, job.model, "dropped")
            return
        self.metrics.shadows.labels(job.route, "sent").inc()
        self.stats.record_shadow(job.route, job.model, "sent")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answer = await job.send(backend)
        except ModelyardError as exc:
            self.metrics.shadows.labels(job.route, "failed").inc()
            self.stats.record_shadow(job.route, job.model, "failed")
            log.debug("shadow of route %s to %s on %s failed: %s", job.route, job.model, backend, exc)
            return
        took = loop.time() - started
        failed = answer.status in _GRPC_FAILED if job.protocol in _GRPC_NAMING_FIELDS else answer.status >= 500
        agree = same_answer(job.protocol, job.primary, answer)
        outcome = "failed" if failed and not agree else "agree" if agree else "disagree"
        self.metrics.shadows.labels(job.route, "agree" if agree else "disagree").inc()
        self.stats.record_shadow(job.route, job.model, outcome, job.primary_seconds, took)
        if outcome == "disagree":
            request_id = job.request.request_id if job.request is not None else ""
            self.stats.disagreement(
                Disagreement(
                    job.route, job.model, request_id, clip(_plain(job.primary)), clip(_plain(answer)), time.time()
                )
            )


def same_answer(protocol: str, a: ForwardResponse, b: ForwardResponse) -> bool:
    """Whether two models answered the same request alike (see the module docstring)."""
    if a.status != b.status:
        return False
    if a.body == b.body:
        return True
    if a.status not in (0, 200):
        return True
    try:
        return bool(_result(protocol, a) == _result(protocol, b))
    except (ValueError, UnicodeDecodeError, WireError):
        return False


def _result(protocol: str, resp: ForwardResponse) -> Any:
    if protocol in _GRPC_NAMING_FIELDS:
        skip = _GRPC_NAMING_FIELDS[protocol]
        view = memoryview(resp.body)
        return [bytes(view[start:end]) for field, _, start, _, end in records(view, 0, len(view)) if field not in skip]
    body, tail = _plain(resp), b""
    if protocol == "kserve":
        size = next((v for k, v in resp.headers if k == "inference-header-content-length"), None)
        if size is not None:
            body, tail = resp.body[: int(size)], resp.body[int(size) :]
        data = json.loads(body)
        return (data.get("outputs") if isinstance(data, dict) else data), tail
    data = json.loads(_plain(resp))
    if isinstance(data, dict):
        return {k: data[k] for k in ("predictions", "outputs", "results") if k in data}
    return data


def _plain(resp: ForwardResponse) -> bytes:
    """The body without its HTTP content encoding (backends gzip answers for clients that accept it)."""
    encoding = next((v for k, v in resp.headers if k.lower() == "content-encoding"), "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            return zlib.decompress(resp.body, 47)  # 32 + 15: gzip or zlib header, detected
        except zlib.error:
            return resp.body
    return resp.body
