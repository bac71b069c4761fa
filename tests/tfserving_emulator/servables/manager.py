"""The manager (basic_manager.cc + aspired_versions_manager.cc + availability_preserving_policy.cc): the
loader harnesses, the management thread, the load/unload executors, the `--max-models` resource limit and
the serving map that inference reads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

from tests.tfserving_emulator.servables.loader import LoadedModel, SavedModelLoader
from tests.tfserving_emulator.servables.state_monitor import (
    AVAILABLE,
    END,
    LOADING,
    START,
    UNLOADING,
    EventBus,
    ServableId,
    ServableState,
    id_debug_string,
)
from tests.tfserving_emulator.status import NOT_FOUND, RESOURCE_EXHAUSTED, TFError

log = logging.getLogger("tfserving_emulator")


# LoaderHarness states
NEW, LOAD_REQUESTED, LOAD_APPROVED, H_LOADING, READY = "kNew", "kLoadRequested", "kLoadApproved", "kLoading", "kReady"
UNLOAD_REQUESTED, QUIESCING, QUIESCED, H_UNLOADING = "kUnloadRequested", "kQuiescing", "kQuiesced", "kUnloading"
DISABLED, ERROR = "kDisabled", "kError"
USES_RESOURCES = {LOAD_APPROVED, H_LOADING, READY, QUIESCING, QUIESCED, UNLOAD_REQUESTED, H_UNLOADING}


@dataclass
class Harness:
    name: str
    version: int
    path: str
    state: str = NEW
    is_aspired: bool = True
    status: TFError | None = None
    model: LoadedModel | None = None
    cancel_load_retry: bool = False

    @property
    def id(self) -> ServableId:
        return (self.name, self.version)


class _Executor:
    """InlineExecutor (0 threads) or ThreadPoolExecutor (n threads), as BasicManager::CreateExecutor."""

    def __init__(self, num_threads: int, prefix: str) -> None:
        self.num_threads = num_threads
        self._pool = futures.ThreadPoolExecutor(num_threads, thread_name_prefix=prefix) if num_threads > 0 else None

    def schedule(self, fn: Callable[[], None]) -> None:
        if self._pool is None:
            fn()
        else:
            self._pool.submit(fn)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass
class ManagerOptions:
    num_load_threads: int = 0
    num_unload_threads: int = 0
    max_num_load_retries: int = 5
    load_retry_interval: float = 60.0
    manage_state_interval: float = 0.1
    max_models: int | None = None


class Manager:
    def __init__(self, bus: EventBus, loader: SavedModelLoader, options: ManagerOptions, stopping: threading.Event):
        self._bus = bus
        self._loader = loader
        self._options = options
        self._stopping = stopping
        self._mu = threading.Lock()
        self._ongoing_cv = threading.Condition(self._mu)
        self._num_ongoing = 0
        self._decision_lock = threading.Lock()
        self._harnesses: dict[str, dict[int, Harness]] = {}
        self._serving: dict[str, dict[int, LoadedModel]] = {}
        self._pending_lock = threading.Lock()
        self._pending: dict[str, list[tuple[int, str]]] = {}
        self._load_executor_lock = threading.Lock()
        self._load_executor = _Executor(options.num_load_threads, "load")
        self._unload_executor = _Executor(options.num_unload_threads, "unload")
        self._thread = threading.Thread(target=self._run, name="AspiredVersionsManager_ManageState", daemon=True)
        self._thread.start()

    # -- public --

    def enqueue_aspired_versions(self, name: str, versions: list[tuple[int, str]]) -> None:
        with self._pending_lock:
            self._pending[name] = versions

    @property
    def num_load_threads(self) -> int:
        return self._load_executor.num_threads

    def set_num_load_threads(self, num_threads: int) -> None:
        with self._load_executor_lock:
            old = self._load_executor
            old.shutdown()  # waits for the loads in flight, as resetting the C++ executor does
            self._load_executor = _Executor(num_threads, "load")

    def get_servable(self, name: str, version: int | None) -> LoadedModel:
        serving = self._serving
        versions = serving.get(name, {})
        if version is None:
            if versions:
                return versions[max(versions)]
            raise TFError(NOT_FOUND, f"Servable not found for request: Latest({name})")
        if version in versions:
            return versions[version]
        raise TFError(NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")

    # -- the management thread --

    def _run(self) -> None:
        interval = self._options.manage_state_interval
        while not self._stopping.is_set():
            begin = time.monotonic()
            try:
                self._flush_servables()
                self._handle_pending_aspired_versions_requests()
                self._invoke_policy_and_execute_action()
            except Exception:  # pragma: no cover - a bug here must not kill the thread silently
                log.exception("management pass failed")
            self._stopping.wait(max(0.0, begin + interval - time.monotonic()))

    def _publish(self, harness: Harness, state: str, health: TFError | None = None) -> None:
        self._bus.publish(ServableState(harness.name, harness.version, state, health))

    def _flush_servables(self) -> None:
        with self._mu:
            for name in list(self._harnesses):
                versions = self._harnesses[name]
                for version, harness in list(versions.items()):
                    if harness.state in (NEW, DISABLED, ERROR) and not harness.is_aspired:
                        del versions[version]
                if not versions:
                    del self._harnesses[name]

    def _handle_pending_aspired_versions_requests(self) -> None:
        with self._pending_lock:
            for name in list(self._pending):
                versions = self._pending[name]
                with self._mu:
                    current = self._harnesses.get(name, {})
                    reaspired = any(v in current and not current[v].is_aspired for v, _ in versions)
                    if reaspired:
                        continue  # wait for the old harness to unload and be flushed
                    self._process_aspired_versions_request(name, versions)
                del self._pending[name]

    def _process_aspired_versions_request(self, name: str, versions: list[tuple[int, str]]) -> None:
        next_aspired = {v for v, _ in versions}
        current_aspired: set[int] = set()
        harnesses = self._harnesses.setdefault(name, {})
        for version, harness in harnesses.items():
            if harness.is_aspired:
                current_aspired.add(version)
            if version not in next_aspired:
                harness.is_aspired = False
                if harness.status is None:
                    harness.cancel_load_retry = True
        for version, path in versions:
            if version in next_aspired - current_aspired and version not in harnesses:
                harness = Harness(name, version, path)
                harnesses[version] = harness
                self._publish(harness, START)
        if not harnesses:
            del self._harnesses[name]

    def _next_action(self) -> tuple[str, ServableId] | None:
        """AvailabilityPreservingPolicy per stream; an unload is preferred over a load."""
        loads: list[ServableId] = []
        with self._mu:
            for name in sorted(self._harnesses):
                snapshot = list(self._harnesses[name].values())
                has_aspired = any(h.is_aspired for h in snapshot)
                has_aspired_serving = any(h.is_aspired and h.state == READY for h in snapshot)
                unaspired_serving = [h for h in snapshot if not h.is_aspired and h.state == READY]
                if (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1) and unaspired_serving:
                    return ("unload", min(unaspired_serving, key=lambda h: h.version).id)
                new_aspired = [h for h in snapshot if h.is_aspired and h.state == NEW]
                if new_aspired:
                    loads.append(max(new_aspired, key=lambda h: h.version).id)
        return ("load", loads[0]) if loads else None

    def _invoke_policy_and_execute_action(self) -> None:
        action = self._next_action()
        if action is None:
            return
        kind, servable_id = action
        with self._mu:
            harness = self._healthy_harness(servable_id)
            if harness is None:
                return
            if kind == "load":
                if harness.state != NEW:
                    return
                harness.state = LOAD_REQUESTED
            else:
                if harness.state != READY:
                    return
                harness.state = UNLOAD_REQUESTED
        if kind == "load":
            with self._load_executor_lock:
                self._load_executor.schedule(lambda: self._handle_request("load", servable_id))
        else:
            self._unload_executor.schedule(lambda: self._handle_request("unload", servable_id))

    def _healthy_harness(self, servable_id: ServableId) -> Harness | None:
        harness = self._harnesses.get(servable_id[0], {}).get(servable_id[1])
        if harness is None or harness.status is not None:
            return None
        return harness

    def _handle_request(self, kind: str, servable_id: ServableId) -> None:
        with self._decision_lock, self._mu:
            harness = self._healthy_harness(servable_id)
            if harness is None:
                return
            if kind == "load":
                if not self._approve_load(harness):
                    return
                harness.state = LOAD_APPROVED
            else:
                harness.state = QUIESCING
            self._num_ongoing += 1
        try:
            if kind == "load":
                self._execute_load(harness)
            else:
                self._execute_unload(harness)
        finally:
            with self._mu:
                self._num_ongoing -= 1
                self._ongoing_cv.notify_all()

    def _approve_load(self, harness: Harness) -> bool:
        """ReserveResources with --max-models as the resource limit. Called with _mu held."""
        limit = self._options.max_models
        if limit is None:
            return True
        while True:
            used = sum(
                1
                for versions in self._harnesses.values()
                for h in versions.values()
                if h.state in USES_RESOURCES and h is not harness
            )
            if used < limit:
                return True
            if self._num_ongoing == 0:
                error = TFError(
                    RESOURCE_EXHAUSTED, f"Insufficient resources to load servable {id_debug_string(harness.id)}"
                )
                log.warning("%s", error.to_string())
                harness.state = ERROR
                harness.status = error
                self._publish(harness, END, error)
                return False
            self._ongoing_cv.wait()

    def _execute_load(self, harness: Harness) -> None:
        self._publish(harness, LOADING)
        with self._mu:
            harness.state = H_LOADING
        max_tries = self._options.max_num_load_retries + 1
        tries = 0
        model: LoadedModel | None = None
        error: TFError | None = None
        while True:
            if tries > 0:
                self._stopping.wait(self._options.load_retry_interval)
                log.info("Retrying load on servable version: %s retry: %d", id_debug_string(harness.id), tries)
            try:
                model = self._loader.load(harness.name, harness.version, harness.path)
                error = None
            except TFError as e:
                error = e
                log.error("Loading servable: %s failed: %s", id_debug_string(harness.id), e.to_string())
            tries += 1
            if error is None or tries >= max_tries or self._stopping.is_set():
                break
            with self._mu:
                if not harness.is_aspired or harness.cancel_load_retry:
                    break
        with self._mu:
            if error is None:
                harness.model = model
                harness.state = READY
                self._update_serving_map()
            else:
                harness.state = ERROR
                harness.status = error
        if error is None:
            log.info("Successfully loaded servable version %s", id_debug_string(harness.id))
            self._publish(harness, AVAILABLE)
        else:
            self._publish(harness, END, error)

    def _execute_unload(self, harness: Harness) -> None:
        with self._mu:
            self._publish(harness, UNLOADING)
            self._update_serving_map()
            harness.state = QUIESCED
        log.info("Unloading servable version %s", id_debug_string(harness.id))
        self._loader.unload(harness.model)
        with self._mu:
            harness.state = DISABLED
            harness.model = None
        self._publish(harness, END)

    def _update_serving_map(self) -> None:
        serving: dict[str, dict[int, LoadedModel]] = {}
        for name, versions in self._harnesses.items():
            for version, harness in versions.items():
                if harness.state == READY and harness.model is not None:
                    serving.setdefault(name, {})[version] = harness.model
        self._serving = serving
