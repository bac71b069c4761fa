"""Servable states, the event bus and the state monitor (servable_state_monitor.cc): what GetModelStatus
reports and what a reload waits on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorflow_serving.apis import (
    get_model_status_pb2,
)

from tests.tfserving_emulator.status import TFError

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
STATE_PROTO = {
    START: get_model_status_pb2.ModelVersionStatus.START,
    LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    END: get_model_status_pb2.ModelVersionStatus.END,
}

ServableId = tuple[str, int]


def id_debug_string(servable_id: ServableId) -> str:
    return f"{{name: {servable_id[0]} version: {servable_id[1]}}}"


@dataclass(frozen=True)
class ServableState:
    name: str
    version: int
    state: str
    health: TFError | None = None


class EventBus:
    """Synchronous publish to every subscriber, one event at a time."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[ServableState], None]] = []

    def subscribe(self, fn: Callable[[ServableState], None]) -> None:
        with self._lock:
            self._subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[ServableState], None]) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s is not fn]

    def publish(self, state: ServableState) -> None:
        with self._lock:
            for fn in list(self._subscribers):
                fn(state)


ServableRequestT = tuple[str, int | None]  # (name, version or None for Latest)


@dataclass
class _Waiter:
    requests: list[ServableRequestT]
    goal: str
    done: threading.Event = field(default_factory=threading.Event)
    reached_goal: bool = False
    states_reached: dict[ServableId, str] = field(default_factory=dict)


class StateMonitor:
    """ServableStateMonitor: the last state of every version ever seen (END included), and waits."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._states: dict[str, dict[int, ServableState]] = {}
        self._waiters: list[_Waiter] = []
        bus.subscribe(self._handle)

    def close(self) -> None:
        self._bus.unsubscribe(self._handle)

    def _handle(self, state: ServableState) -> None:
        with self._lock:
            self._states.setdefault(state.name, {})[state.version] = state
            for waiter in list(self._waiters):
                if self._check(waiter):
                    self._waiters.remove(waiter)
                    waiter.done.set()

    def get_state(self, name: str, version: int) -> ServableState | None:
        with self._lock:
            return self._states.get(name, {}).get(version)

    def get_version_states(self, name: str) -> dict[int, ServableState]:
        with self._lock:
            return dict(self._states.get(name, {}))

    def _check(self, waiter: _Waiter) -> bool:
        """ShouldSendNotification: every request has reached the goal or END (Latest: any version of the stream)."""
        reached = True
        states_reached: dict[ServableId, str] = {}
        for name, version in waiter.requests:
            if version is not None:
                state = self._states.get(name, {}).get(version)
                if state is None or state.state not in (waiter.goal, END):
                    return False
                reached = reached and state.state == waiter.goal
                states_reached[(name, version)] = state.state
            else:
                found = None
                for v in sorted(self._states.get(name, {})):
                    if self._states[name][v].state in (waiter.goal, END):
                        found = self._states[name][v]
                        break
                if found is None:
                    return False
                reached = reached and found.state == waiter.goal
                states_reached[(name, found.version)] = found.state
        waiter.reached_goal = reached
        waiter.states_reached = states_reached
        return True

    def wait_until_reach(self, requests: list[ServableRequestT], goal: str) -> tuple[bool, dict[ServableId, str]]:
        """Blocks (without timeout, like TF Serving) until every request reached `goal` or END."""
        waiter = _Waiter(requests, goal)
        with self._lock:
            if self._check(waiter):
                return waiter.reached_goal, waiter.states_reached
            self._waiters.append(waiter)
        waiter.done.wait()
        return waiter.reached_goal, waiter.states_reached
