"""The demo's workload: Zipf-skewed model choice, open-loop arrivals, workers that check every answer, and a
sampler of what each Triton holds."""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from deploy.localstack.stack import LocalStack

REQUEST_TIMEOUT_S = 30.0
HOLDING_INTERVAL_S = 0.2


class ZipfPicker:
    """Rank r (1-based) is chosen with probability proportional to 1/r^s, over a seeded permutation of names."""

    def __init__(self, names: Sequence[str], s: float, seed: int) -> None:
        self.ranked = list(names)
        random.Random(seed).shuffle(self.ranked)
        self.weights: list[float] = [1.0 / float(r) ** s for r in range(1, len(self.ranked) + 1)]
        self.cum = list(itertools.accumulate(self.weights))

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.ranked, cum_weights=self.cum)[0]

    def share(self, top: int) -> float:
        """Expected fraction of requests that go to the `top` hottest models."""
        return self.cum[min(top, len(self.cum)) - 1] / self.cum[-1]


@dataclass(frozen=True)
class Result:
    done: float  # time.monotonic() when the answer (or the failure) came
    latency: float
    model: str
    cold: bool  # the gateway said this request waited for a load (x-modelyard-cold: 1)
    answered: bool  # an HTTP response came (right or wrong); False for timeouts and connection errors
    backend: str = ""  # x-modelyard-backend
    error_kind: str | None = None
    error: str | None = None


class Results:
    """What the workers saw, appended from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Result] = []

    def add(self, r: Result) -> None:
        with self._lock:
            self._items.append(r)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self._items)


def check_answer(
    response: httpx.Response, name: str, data: Sequence[float], offsets: dict[str, float]
) -> tuple[str, str] | None:
    """None when the answer is right, else (kind of error, what was wrong)."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}", f"{name}: HTTP {response.status_code}: {response.text[:300]}"
    try:
        body = response.json()
        outputs = {o["name"]: o for o in body["outputs"]}
        got = [float(v) for v in outputs["OUTPUT0"]["data"]]
        got_name = list(outputs["MODEL_NAME"]["data"])
    except (ValueError, KeyError, TypeError) as exc:
        return "malformed answer", f"{name}: not the expected KServe v2 answer ({exc!r}): {response.text[:300]}"
    offset = offsets[name]
    expected = [x + offset for x in data]
    if len(got) != len(expected) or any(
        abs(g - e) > 1e-3 * max(1.0, abs(e)) for g, e in zip(got, expected, strict=True)
    ):
        hint = ""
        if len(got) == len(expected):
            by_offset = {v: k for k, v in offsets.items()}
            other = by_offset.get(float(round(got[0] - data[0])))
            if other is not None and other != name:
                hint = f" (that is {other}'s answer)"
        return "wrong OUTPUT0", f"{name}: OUTPUT0 {got}, expected input + {offset:g} = {expected}{hint}"
    if got_name != [name]:
        return "wrong MODEL_NAME", f"{name}: MODEL_NAME {got_name}, expected [{name!r}]"
    return None


class Arrivals(threading.Thread):
    """Open-loop traffic, as from many independent clients: a request is due every 1/rate seconds (Poisson
    gaps), whether or not earlier ones were answered. A request waiting for a cold load holds up nobody else."""

    def __init__(self, rate: float, picker: ZipfPicker, seed: int) -> None:
        super().__init__(name="arrivals", daemon=True)
        self.rate = rate
        self.picker = picker
        self.rng = random.Random(f"{seed}-arrivals")  # one generator: the same seed gives the same requests
        self.due: queue.Queue[tuple[float, str]] = queue.Queue()
        self.stop_event = threading.Event()

    def run(self) -> None:
        t = time.monotonic()
        while not self.stop_event.is_set():
            t += self.rng.expovariate(self.rate)
            delay = t - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            self.due.put((t, self.picker.pick(self.rng)))


class Worker(threading.Thread):
    """One client connection: takes the next due request, sends it, checks the answer, until told to stop.
    Latency counts from when the request was due, so time spent waiting for a free worker is not hidden."""

    def __init__(
        self,
        index: int,
        url: str,
        picker: ZipfPicker,
        offsets: dict[str, float],
        seed: int,
        out: Results,
        due: queue.Queue[tuple[float, str]],
    ) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.url = url
        self.picker = picker
        self.offsets = offsets
        self.rng = random.Random(f"{seed}-worker-{index}")
        self.out = out
        self.due = due
        self.stop_event = threading.Event()
        self.current: str | None = None  # the model of the request in flight, for the live view

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stop_event.is_set():
                try:
                    scheduled, name = self.due.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.out.add(self.one(client, scheduled, name))
        self.current = None

    def one(self, client: httpx.Client, scheduled: float, name: str) -> Result:
        data = [round(self.rng.uniform(-10.0, 10.0), 2) for _ in range(4)]
        payload = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": data}]}
        cold, answered, backend = False, False, ""
        failure: tuple[str, str] | None
        self.current = name
        started = scheduled
        try:
            response = client.post(f"/v2/models/{name}/infer", json=payload)
            answered = True
            cold = response.headers.get("x-modelyard-cold") == "1"
            backend = response.headers.get("x-modelyard-backend", "")
            failure = check_answer(response, name, data, self.offsets)
        except httpx.TimeoutException:
            failure = "timeout", f"{name}: no answer within {REQUEST_TIMEOUT_S:g} s"
        except httpx.HTTPError as exc:
            failure = "request failed", f"{name}: {type(exc).__name__}: {exc}"
        done = time.monotonic()
        kind, detail = failure if failure else (None, None)
        return Result(done, done - started, name, cold, answered, backend, kind, detail)


class HoldingSampler(threading.Thread):
    """Reads every Triton's repository index about every 0.2 s and keeps the most models each held at once."""

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(name="holding-sampler", daemon=True)
        self.stack = stack
        self.stop_event = threading.Event()
        self.max_held = [0] * len(stack.tritons)
        self.samples = 0
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            for i, triton in enumerate(self.stack.tritons):
                try:
                    held = len(self.stack.holding(triton))
                except (httpx.HTTPError, ValueError):
                    self.failures += 1
                    continue
                self.max_held[i] = max(self.max_held[i], held)
                self.samples += 1
            self.stop_event.wait(HOLDING_INTERVAL_S)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)
