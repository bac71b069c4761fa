"""What clients saw during a fault, and what the Tritons held.

`Traffic` runs client threads against several gateways and sorts every answer: `ok` (the right model answered,
checked by its output), `retriable` (503 with Retry-After, or 504), `bad` (anything else: a 500, a 503 without
Retry-After, a wrong answer, no answer within the deadline). `CapacitySampler` polls each Triton's own
repository index and keeps the most models it ever held at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from deploy.localstack.triton import TritonServer
from tests.waiting import eventually


def infer_body(values: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [len(values)], "data": values}]}


def correct(data: dict[str, object], model: str, expected: list[float]) -> bool:
    """The answer came from `model`: it names itself, and its output is the input plus that model's offset."""
    outputs = {o["name"]: o for o in data["outputs"]}  # type: ignore[attr-defined]
    return bool(outputs["MODEL_NAME"]["data"] == [model] and outputs["OUTPUT0"]["data"] == expected)


@dataclass
class Counts:
    ok: int = 0
    retriable: int = 0
    bad: int = 0
    slowest_retriable: float = 0.0  # seconds: a 503 during an outage should come promptly, not at a timeout
    kinds: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        slowest = f" slowest retriable {self.slowest_retriable:.2f} s" if self.retriable else ""
        return f"ok={self.ok} retriable={self.retriable} bad={self.bad} {dict(self.kinds)}{slowest}"


class Traffic:
    """`threads` client loops, each cycling over `gateways` and `models`, until `stop()`."""

    def __init__(
        self,
        gateways: Sequence[str],
        models: Sequence[str],
        offset: Callable[[str], float],
        *,
        threads: int = 2,
        deadline: float = 15.0,
        pause: float = 0.02,
    ) -> None:
        self.gateways = list(gateways)
        self.models = list(models)
        self.offset = offset
        self.deadline = deadline
        self.pause = pause
        self.counts = Counts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Counts:
        self._stop.set()
        for t in self._threads:
            t.join(self.deadline + 5)
        return self.counts

    def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        """Wait until `n` more answers of any kind were recorded."""
        target = self.total() + n
        eventually(
            lambda: self.total() >= target, f"{n} more answers (traffic stalled)", timeout, detail=lambda: self.counts
        )

    def wait_ok(self, n: int, timeout: float = 30.0) -> None:
        """Wait until `n` more correct answers were recorded."""
        target = self.counts.ok + n
        eventually(lambda: self.counts.ok >= target, f"{n} more correct answers", timeout, detail=lambda: self.counts)

    def total(self) -> int:
        c = self.counts
        return c.ok + c.retriable + c.bad

    def _record(self, kind: str, what: str, detail: str = "", took: float = 0.0) -> None:
        with self._lock:
            if kind == "retriable":
                self.counts.slowest_retriable = max(self.counts.slowest_retriable, took)
            setattr(self.counts, kind, getattr(self.counts, kind) + 1)
            self.counts.kinds[what] += 1
            if kind == "bad" and len(self.counts.examples) < 5:
                self.counts.examples.append(f"{what}: {detail[:300]}")

    def _run(self, i: int) -> None:
        pairs = itertools.cycle([(g, m) for m in self.models for g in self.gateways])
        for _ in range(i * 3):
            next(pairs)
        with httpx.Client(timeout=self.deadline) as client:
            n = 0
            while not self._stop.is_set():
                gw, model = next(pairs)
                n += 1
                values = [float(n), float(i)]
                start = time.monotonic()
                try:
                    r = client.post(f"{gw}/v2/models/{model}/infer", json=infer_body(values))
                except httpx.TimeoutException as exc:
                    self._record("bad", "hang", f"{model} via {gw}: {exc!r}")
                    continue
                except httpx.HTTPError as exc:
                    self._record("bad", "connection", f"{model} via {gw}: {exc!r}")
                    continue
                retry_after = self._classify(r, model, values, time.monotonic() - start)
                # a well-behaved client honours Retry-After (capped: the test's clients are impatient)
                self._stop.wait(min(retry_after, 1.0) if retry_after else self.pause)

    def _classify(self, r: httpx.Response, model: str, values: list[float], took: float) -> float:
        """Records the answer; returns the Retry-After seconds it asked for (0: none)."""
        if r.status_code == 200:
            if correct(r.json(), model, [v + self.offset(model) for v in values]):
                self._record("ok", "200")
            else:
                self._record("bad", "wrong answer", f"{model}: {r.text}")
        elif r.status_code == 503 and r.headers.get("retry-after", "").isdigit():
            self._record("retriable", "503+Retry-After", took=took)
            return float(r.headers["retry-after"])
        elif r.status_code == 504:
            self._record("retriable", "504", took=took)
        else:
            self._record("bad", str(r.status_code), f"{model}: {r.text}")
        return 0.0


class CapacitySampler:
    """Polls each Triton's repository index; `peak[i]` is the most models Triton i held at once."""

    def __init__(self, tritons: Sequence[TritonServer], interval: float = 0.1) -> None:
        self.tritons = list(tritons)
        self.interval = interval
        self.peak = [0] * len(self.tritons)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CapacitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                for i, t in enumerate(self.tritons):
                    try:
                        index = client.post(f"{t.url}/v2/repository/index", json={}).json()
                    except (httpx.HTTPError, ValueError):
                        continue  # a killed Triton holds nothing
                    held = sum(1 for e in index if e.get("state") in ("READY", "LOADING", "UNLOADING"))
                    self.peak[i] = max(self.peak[i], held)
                    self.samples += 1
                self._stop.wait(self.interval)
