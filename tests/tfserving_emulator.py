"""A TensorFlow Serving 2.x emulator for modelyard's tests: the model-management and inference behaviour of
`tensorflow_model_server`, as far as a client can observe it, rebuilt in Python on the official
`tensorflow_serving.apis` protos, grpc and TensorFlow itself.

    python -m tests.tfserving_emulator --grpc-port 8500 --rest-port 8501 [--model-config-file F] ...

No TF Serving binary can be installed where modelyard's tests run, so the gateway's TF Serving adapter is tested
against this. It follows TF Serving's own code (server_core.cc, model_service_impl.cc, get_model_status_impl.cc,
file_system_storage_path_source.cc, aspired_versions_manager.cc, basic_manager.cc, loader_harness.cc,
availability_preserving_policy.cc, servable_state_monitor.cc, load_servables_fast.cc, predict_util.cc,
classifier.cc, regressor.cc, get_model_metadata_impl.cc, http_rest_api_handler.cc, http_rest_api_util.cc,
http_server.cc, json_tensor.cc, grpc_status_util.cc) component by component, so the observable behaviour falls
out of the same structure rather than being special-cased:

Reproduced
- ModelService.HandleReloadConfigRequest: only `model_config_list` (anything else: INVALID_ARGUMENT "ServerModelConfig
  type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported"). The list REPLACES
  the configured list; ServerCore's config mutex serializes reloads. Validation first (duplicate names, relative
  base paths, model_type/model_platform, platform changes, version labels), then the file-system source gets the
  new list: models left out are un-aspired at once and unloaded by the manager thread (UNLOADING then END, after
  `--unload-delay`); the call then waits, with a fresh state monitor, for the NEW models only (Latest(name) to reach
  AVAILABLE or END) and fails with UNKNOWN "N model(s) did not become available: {{name: X version: 1} due to
  error: CODE: msg}, }" if one ended instead. Models already in the old list are not waited for, whatever changed.
  The first model_config_list (at startup, or the first reload of a server started without one) goes through
  load_servables_fast instead ("Some servables did not become available: {...}"), and a failure there leaves no
  file-system source behind, exactly like TF Serving (see tensorflow/serving#1565). A failed reload answers with
  the gRPC error (code and message, message cut at 1024 characters + "...TRUNCATED"); ReloadConfigResponse.status
  is set too, but grpc sends no body with an error status, as with the C++ server.
- The file-system source polls every `--file-system-poll-wait-seconds` (TF Serving: 1 s): numeric version folders,
  version policies `latest` (num_versions), `all`, `specific`; a missing base path makes the WHOLE poll fail (no
  model gets new aspired versions; a reload adding it hangs until the path appears - TF Serving behaves the same,
  tensorflow/serving#1447); a base path with no version folder un-aspires every version of that model;
  `--fail-if-no-model-versions-found` makes such configs fail the reload instead.
- The AspiredVersionsManager: one management pass every 100 ms (flush, pending aspired versions, one action, an
  unload before a load), the AvailabilityPreservingPolicy (a new version loads before the old one unloads),
  loads and unloads inline in that thread unless `--num-load-threads`/`--num-unload-threads` > 0 (TF Serving's
  defaults are 0: loads are serial), `--num-initial-load-threads` for the first config, load retries
  (`--max-num-load-retries`, default 5 like TF Serving, `--load-retry-interval-seconds`, default 60) that block that
  thread, a failed version kept in END with its error while it stays aspired (it is retried only after it was
  left out of a reload and added again), re-aspired versions waiting until their old harness is gone.
- States as the ServableStateMonitor reports them: START, LOADING, AVAILABLE, UNLOADING, END with `status`
  (error_code, error_message); versions of removed models stay reported in END. GetModelStatus: "Missing
  ModelSpec", NOT_FOUND "Could not find any versions of model X" / "Could not find version N of model X".
- Loading: a version folder needs saved_model.pb or saved_model.pbtxt (else NOT_FOUND "Specified file path does not
  appear to contain a SavedModel bundle (should have a file called `saved_model.pb`)\\nSpecified file path: P");
  export.meta -> UNIMPLEMENTED "Session Bundle is deprecated and removed."; an unparsable proto -> DATA_LOSS; no
  `serve` meta graph -> NOT_FOUND; then a real tf.saved_model.load. `--max-models N` plays the part of TF Serving's
  resource tracker (--total_model_memory_limit_bytes): a load that would make more than N versions hold resources
  (loading, available or unloading) fails with RESOURCE_EXHAUSTED "Insufficient resources to load servable {name:
  X version: 1}" and END, after waiting for any load/unload in flight, like BasicManager::ReserveResources.
- PredictionService Predict / Classify / Regress / GetModelMetadata on the serving map: Latest(name) is the highest
  AVAILABLE version; NOT_FOUND "Servable not found for request: Latest(x)" / "Specific(x, 3)"; version labels
  (`version_labels` in the config, assignable only to an AVAILABLE version, "Unrecognized servable version label");
  predict validation and messages of predict_util.cc (signature key, method name, input count, aliases,
  output_filter); classify/regress over tf.Example `Input` with context, with the method-name, signature and
  output-shape checks of classifier.cc / regressor.cc; metadata = the `signature_def` map of the loaded meta graph.
- REST (http_rest_api_handler.cc): GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata], POST
  .../{m}[/versions/{v}|/labels/{l}]:(predict|classify|regress), the row ("instances" -> "predictions") and
  columnar ("inputs" -> "outputs") formats with json_tensor.cc's checks, b64 and `_bytes` outputs, NaN/Infinity,
  float32 printed as TF Serving prints it (shortest round trip, whole numbers with ".0"); errors as
  `{ "error": "<message>" }` with http_server.cc's code mapping (NOT_FOUND 404, INVALID_ARGUMENT and
  FAILED_PRECONDITION 400, UNKNOWN/INTERNAL 500, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...), paths not under
  /v1/ 404 with an empty body, unknown /v1/ paths 400 "Malformed request: GET /v1/...".

Not reproduced (or only approximately)
- Batching, warmup (assets.extra), MultiInference (UNIMPLEMENTED here), TFLite, the session-run timeout, SSL,
  Prometheus, request logging, --model_config_file_poll_wait_seconds, a custom_model_config at startup (TF
  Serving crashes; the emulator exits 1), the deprecated `model_type` values other than TENSORFLOW.
- Exact texts of errors raised while TensorFlow runs a model (dtype/shape mismatches give INVALID_ARGUMENT with
  TensorFlow's Python message), of JSON parse errors (Python's json module, not rapidjson's), and the whitespace of
  JSON bodies. Error strings inside other errors use absl's "CODE: message" form (TF Serving 2.x).
- SIGTERM/SIGINT exit 0 after closing the ports (TF Serving dies by the signal). Nothing is unloaded on exit.
- TensorFlow runs with one intra-op and one inter-op thread (`--tf-threads`); loads are real TF loads, plus
  `--load-delay`.

Extra for tests: `--load-delay` / `--unload-delay` seconds added to every load / unload, `--load-log FILE` gets one
line `load <name> <version>` per load attempt (each retry is an attempt), `--max-models N` as above.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

log = logging.getLogger("tfserving_emulator")
Array = npt.NDArray[Any]

# --- status codes (tensorflow/core/protobuf/error_codes.proto == grpc codes) ---------------------------------------

OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS = 0, 1, 2, 3, 4, 5, 6
PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE = 7, 8, 9, 10, 11
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED = 12, 13, 14, 15, 16
CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
# http_server.cc ToHTTPStatusCode
HTTP_STATUS = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
SUPPORTED_PLATFORMS = ("tensorflow",)


class TFError(Exception):
    """A non-OK tensorflow::Status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_string(self) -> str:  # absl::Status::ToString
        return f"{CODE_NAMES.get(self.code, str(self.code))}: {self.message}"


# --- servable states, event bus, state monitor (servable_state_monitor.cc) ----------------------------------------

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


# --- loading real SavedModels ------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    name: str
    version: int
    path: str
    meta_graph: meta_graph_pb2.MetaGraphDef
    tf_model: Any

    @property
    def signature_defs(self) -> Any:
        return self.meta_graph.signature_def


@dataclass
class LoaderOptions:
    load_delay: float = 0.0
    unload_delay: float = 0.0
    load_log: str | None = None


class SavedModelLoader:
    """What SavedModelBundleFactory + LoadSessionBundleOrSavedModelBundle do for one version folder."""

    def __init__(self, options: LoaderOptions, stopping: threading.Event) -> None:
        self.options = options
        self._stopping = stopping
        self._log_lock = threading.Lock()

    def load(self, name: str, version: int, export_dir: str) -> LoadedModel:
        if self.options.load_log:
            with self._log_lock, open(self.options.load_log, "a") as f:
                f.write(f"load {name} {version}\n")
        log.info("Loading servable version %s from %s", id_debug_string((name, version)), export_dir)
        if self.options.load_delay > 0:
            self._stopping.wait(self.options.load_delay)
        path = Path(export_dir)
        if (path / "export.meta").exists():
            raise TFError(UNIMPLEMENTED, "Session Bundle is deprecated and removed.")
        pb, pbtxt = path / "saved_model.pb", path / "saved_model.pbtxt"
        if not pb.exists() and not pbtxt.exists():
            raise TFError(
                NOT_FOUND,
                "Specified file path does not appear to contain a SavedModel bundle (should have a file called "
                f"`saved_model.pb`)\nSpecified file path: {export_dir}",
            )
        saved_model = saved_model_pb2.SavedModel()
        try:
            if pb.exists():
                saved_model.ParseFromString(pb.read_bytes())
            else:
                text_format.Parse(pbtxt.read_text(), saved_model)
        except (DecodeError, text_format.ParseError, UnicodeDecodeError):
            kind = "binary" if pb.exists() else "text"
            raise TFError(DATA_LOSS, f"Can't parse {pb if pb.exists() else pbtxt} as {kind} proto") from None
        meta_graph = next((mg for mg in saved_model.meta_graphs if "serve" in mg.meta_info_def.tags), None)
        if meta_graph is None:
            raise TFError(
                NOT_FOUND,
                "Could not find meta graph def matching supplied tags: { serve }. To inspect available tag-sets in "
                "the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
            )
        try:
            tf_model = tf.saved_model.load(export_dir, tags=["serve"])
        except tf.errors.OpError as e:
            raise TFError(int(e.error_code), e.message) from None
        except Exception as e:
            raise TFError(INTERNAL, f"{type(e).__name__}: {e}") from None
        return LoadedModel(name, version, export_dir, meta_graph, tf_model)

    def unload(self, model: LoadedModel | None) -> None:
        if self.options.unload_delay > 0:
            self._stopping.wait(self.options.unload_delay)


# --- the manager (basic_manager.cc + aspired_versions_manager.cc + availability_preserving_policy.cc) ------------

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


# --- the file-system source (file_system_storage_path_source.cc) -------------------------------------------------


@dataclass
class ServableToMonitor:
    name: str
    base_path: str
    policy: file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


_VERSION_RE = re.compile(r"^\s*[+-]?\d+\s*$")


def _parse_version(child: str) -> int | None:
    if not _VERSION_RE.match(child):
        return None
    value = int(child)
    return value if -(2**63) <= value < 2**63 else None


def poll_servable(servable: ServableToMonitor) -> list[tuple[int, str]]:
    base = servable.base_path
    if not os.path.exists(base):
        raise TFError(INVALID_ARGUMENT, f"Could not find base path {base} for servable {servable.name}")
    try:
        children = sorted(os.listdir(base))
    except OSError as e:
        raise TFError(PERMISSION_DENIED if isinstance(e, PermissionError) else UNKNOWN, str(e)) from None
    by_version: dict[int, str] = {}
    for child in children:
        version = _parse_version(child)
        if version is not None:
            by_version[version] = child
    versions: list[tuple[int, str]] = []
    choice = servable.policy.WhichOneof("policy_choice")
    if choice in (None, "latest"):
        wanted = max(servable.policy.latest.num_versions, 1)
        for version in sorted(by_version, reverse=True)[:wanted]:
            versions.append((version, os.path.join(base, by_version[version])))
    elif choice == "all":
        for child in children:
            version = _parse_version(child)
            if version is not None:
                versions.append((version, os.path.join(base, child)))
    elif choice == "specific":
        specific = set(servable.policy.specific.versions)
        for version in sorted(by_version):
            if version in specific:
                versions.append((version, os.path.join(base, by_version[version])))
        for version in specific - {v for v, _ in versions}:
            log.warning(
                "Version %d of servable %s, which was requested to be served as a 'specific' version in the "
                "servable's version policy, was not found in the file system",
                version,
                servable.name,
            )
    if not versions:
        log.warning("No versions of servable %s found under base path %s", servable.name, base)
    return versions


class FileSystemSource:
    def __init__(self, servables: list[ServableToMonitor], poll_wait: float, fail_if_zero_versions: bool) -> None:
        self._lock = threading.Lock()
        self._poll_wait = poll_wait
        self._fail_if_zero = fail_if_zero_versions
        self._servables: list[ServableToMonitor] = []
        self._callback: Callable[[str, list[tuple[int, str]]], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.update_config(servables)

    def servable_names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._servables]

    def update_config(self, servables: list[ServableToMonitor]) -> None:
        with self._lock:
            if self._fail_if_zero:
                for servable in servables:
                    if not poll_servable(servable):
                        # (sic: TF Serving prints the deprecated top-level base_path field, which is empty here)
                        raise TFError(
                            NOT_FOUND, f"Unable to find a numerical version path for servable {servable.name} at: "
                        )
            if self._callback is not None:
                new_names = {s.name for s in servables}
                for old in self._servables:
                    if old.name not in new_names:
                        self._callback(old.name, [])
            self._servables = list(servables)

    def set_aspired_versions_callback(self, callback: Callable[[str, list[tuple[int, str]]], None]) -> None:
        with self._lock:
            self._callback = callback
        if self._poll_wait >= 0:
            self._thread = threading.Thread(target=self._run, name="FileSystemStoragePathSource", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            begin = time.monotonic()
            self.poll()
            if self._poll_wait == 0:
                return  # TF Serving: poll once
            self._stop.wait(max(0.0, begin + self._poll_wait - time.monotonic()))

    def poll(self) -> None:
        with self._lock:
            if self._callback is None or self._stop.is_set():
                return
            try:
                by_name = [(s.name, poll_servable(s)) for s in self._servables]
            except TFError as e:
                log.error("FileSystemStoragePathSource encountered a filesystem access error: %s", e.message)
                return
            for name, versions in by_name:
                self._callback(name, versions)


# --- ServerCore (server_core.cc) ----------------------------------------------------------------------------------


@dataclass
class CoreOptions:
    file_system_poll_wait: float = 1.0
    fail_if_no_model_versions_found: bool = False
    num_initial_load_threads: int = max(1, 4 * (os.cpu_count() or 1))
    allow_version_labels: bool = True
    allow_version_labels_for_unavailable_models: bool = False


def _uri_is_relative_path(uri: str) -> bool:
    parsed = urllib.parse.urlsplit(uri)
    return not parsed.scheme and not parsed.netloc and not uri.startswith("/")


def _get_platform(config: model_server_config_pb2.ModelConfig) -> str:
    if config.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if config.model_platform:
            raise TFError(
                INVALID_ARGUMENT,
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform.",
            )
        if config.model_type == model_server_config_pb2.TENSORFLOW:
            return "tensorflow"
        raise TFError(INVALID_ARGUMENT, f"ModelServerConfig::model_type choice {config.model_type} not supported.")
    if not config.model_platform:
        raise TFError(
            INVALID_ARGUMENT,
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform.",
        )
    return str(config.model_platform)


class ServerCore:
    def __init__(self, manager: Manager, bus: EventBus, options: CoreOptions) -> None:
        self.manager = manager
        self.bus = bus
        self.options = options
        self.monitor = StateMonitor(bus)
        self._config_mu = threading.Lock()
        self._config = model_server_config_pb2.ModelServerConfig()
        self._source: FileSystemSource | None = None
        self._labels_mu = threading.Lock()
        self._labels: dict[str, dict[str, int]] | None = None

    def reload_config(self, new_config: model_server_config_pb2.ModelServerConfig) -> None:
        with self._config_mu:
            old_kind = self._config.WhichOneof("config")
            new_kind = new_config.WhichOneof("config")
            is_first = old_kind is None
            if not (is_first or (old_kind == "model_config_list" and new_kind == "model_config_list")):
                raise TFError(
                    FAILED_PRECONDITION,
                    "Cannot transition to requested config. It is only legal to transition from one ModelConfigList "
                    "to another.",
                )
            if new_kind is None:
                log.info("Taking no action for empty config.")
                return
            if new_kind == "model_config_list":
                self._validate_model_config_list(new_config.model_config_list)
                if old_kind == "model_config_list":
                    self._validate_no_models_change_platforms(
                        self._config.model_config_list, new_config.model_config_list
                    )
            self._config = model_server_config_pb2.ModelServerConfig()
            self._config.CopyFrom(new_config)
            self._update_model_version_label_map()
            log.info("Adding/updating models.")
            if new_kind == "model_config_list":
                self._add_models_via_model_config_list()
            else:
                raise TFError(INVALID_ARGUMENT, "Missing custom_model_config_loader in ServerCore Options")
            log.info("Finished reloading config")

    @staticmethod
    def _validate_model_config_list(config_list: model_server_config_pb2.ModelConfigList) -> None:
        names: set[str] = set()
        for config in config_list.config:
            if config.name in names:
                raise TFError(INVALID_ARGUMENT, f"Illegal to list model {config.name} multiple times in config list")
            names.add(config.name)
        for config in config_list.config:
            if _uri_is_relative_path(config.base_path):
                raise TFError(
                    INVALID_ARGUMENT,
                    f"Expected model {config.name} to have an absolute path or URI; got base_path()={config.base_path}",
                )

    @staticmethod
    def _validate_no_models_change_platforms(
        old: model_server_config_pb2.ModelConfigList, new: model_server_config_pb2.ModelConfigList
    ) -> None:
        old_platforms = {c.name: _get_platform(c) for c in old.config}
        for config in new.config:
            if config.name not in old_platforms:
                continue
            platform = _get_platform(config)
            if platform != old_platforms[config.name]:
                raise TFError(
                    INVALID_ARGUMENT,
                    f"Illegal to change a model's platform. For model {config.name} platform was "
                    f"{old_platforms[config.name]} and new platform requested is {platform}",
                )

    def _update_model_version_label_map(self) -> None:
        new_map: dict[str, dict[str, int]] = {}
        for config in self._config.model_config_list.config:
            states = self.monitor.get_version_states(config.name)
            for label, version in config.version_labels.items():
                allow_any = False
                if self.options.allow_version_labels_for_unavailable_models:
                    existing = self._labels.get(config.name, {}).get(label) if self._labels else None
                    allow_any = not (existing is not None and existing != version)
                state = states.get(version)
                if not allow_any and (state is None or state.state != AVAILABLE):
                    raise TFError(
                        FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {config.name}, which is not currently "
                        "available for inference",
                    )
                new_map.setdefault(config.name, {})[label] = version
        if not self.options.allow_version_labels:
            if new_map:
                raise TFError(FAILED_PRECONDITION, "Model version labels are not currently allowed by the server.")
            return
        with self._labels_mu:
            self._labels = new_map

    def _add_models_via_model_config_list(self) -> None:
        configs = list(self._config.model_config_list.config)
        servables = [ServableToMonitor(c.name, c.base_path, c.model_version_policy) for c in configs]
        for config in configs:  # CreateStoragePathRoutes
            platform = _get_platform(config)
            if platform not in SUPPORTED_PLATFORMS:
                raise TFError(INVALID_ARGUMENT, f"Model {config.name} requests unsupported platform {platform}")
        if self._source is None:
            source = FileSystemSource(
                servables, self.options.file_system_poll_wait, self.options.fail_if_no_model_versions_found
            )
            previous_threads = self.manager.num_load_threads
            self.manager.set_num_load_threads(self.options.num_initial_load_threads)
            source.set_aspired_versions_callback(self.manager.enqueue_aspired_versions)
            reached, states = self.monitor.wait_until_reach([(c.name, None) for c in configs], AVAILABLE)
            self.manager.set_num_load_threads(previous_threads)
            if not reached:
                source.stop()  # the C++ source is a local that dies with the failed call
                message = "Some servables did not become available: {"
                for servable_id, state in sorted(states.items()):
                    if state != AVAILABLE:
                        message += id_debug_string(servable_id) + ", "
                raise TFError(UNKNOWN, message + "}")
            self._source = source
        else:
            fresh = StateMonitor(self.bus)
            try:
                old_names = set(self._source.servable_names())
                new_models = sorted({s.name for s in servables} - old_names)
                self._source.update_config(servables)
                self._wait_until_models_available(new_models, fresh)
            finally:
                fresh.close()

    @staticmethod
    def _wait_until_models_available(models: list[str], monitor: StateMonitor) -> None:
        reached, states = monitor.wait_until_reach([(m, None) for m in models], AVAILABLE)
        if reached:
            return
        unavailable = sorted(servable_id for servable_id, state in states.items() if state != AVAILABLE)
        message = f"{len(unavailable)} model(s) did not become available: {{"
        for servable_id in unavailable:
            state = monitor.get_state(*servable_id)
            error = f" due to error: {state.health.to_string()}" if state and state.health else ""
            message += "{" + id_debug_string(servable_id) + error + "}, "
        raise TFError(UNKNOWN, message + "}")

    # -- request processing --

    def servable_request(self, spec: model_pb2.ModelSpec) -> ServableRequestT:
        if not spec.name:
            raise TFError(INVALID_ARGUMENT, "ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return (spec.name, spec.version.value)
        if choice == "version_label":
            if not self.options.allow_version_labels:
                raise TFError(
                    INVALID_ARGUMENT,
                    "ModelSpec has 'version_label' set, but it is not currently allowed by the server.",
                )
            return (spec.name, self._version_for_label(spec.name, spec.version_label))
        return (spec.name, None)

    def _version_for_label(self, name: str, label: str) -> int:
        with self._labels_mu:
            if self._labels is None:
                raise TFError(UNAVAILABLE, f"Model labels does not init yet.{label}")
            version = self._labels.get(name, {}).get(label)
        if version is None:
            raise TFError(INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        return version

    def get_servable(self, spec: model_pb2.ModelSpec) -> LoadedModel:
        name, version = self.servable_request(spec)
        return self.manager.get_servable(name, version)

    def get_model_status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        response = get_model_status_pb2.GetModelStatusResponse()
        if spec.HasField("version"):
            version = spec.version.value
            state = self.monitor.get_state(spec.name, version)
            if state is None:
                raise TFError(NOT_FOUND, f"Could not find version {version} of model {spec.name}")
            _add_version_status(response, state)
        else:
            states = self.monitor.get_version_states(spec.name)
            if not states:
                raise TFError(NOT_FOUND, f"Could not find any versions of model {spec.name}")
            for version in sorted(states):
                _add_version_status(response, states[version])
        return response


def _add_version_status(response: get_model_status_pb2.GetModelStatusResponse, state: ServableState) -> None:
    status = response.model_version_status.add()
    status.version = state.version
    status.state = STATE_PROTO[state.state]
    status.status.error_code = state.health.code if state.health else OK
    if state.health:
        status.status.error_message = state.health.message


# --- inference (predict_util.cc, classifier.cc, regressor.cc, get_model_metadata_impl.cc) -------------------------

DTYPE_STRINGS = {
    types_pb2.DT_FLOAT: "float",
    types_pb2.DT_DOUBLE: "double",
    types_pb2.DT_INT32: "int32",
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_INT16: "int16",
    types_pb2.DT_INT8: "int8",
    types_pb2.DT_STRING: "string",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_BOOL: "bool",
    types_pb2.DT_UINT16: "uint16",
    types_pb2.DT_HALF: "half",
    types_pb2.DT_UINT32: "uint32",
    types_pb2.DT_UINT64: "uint64",
    types_pb2.DT_BFLOAT16: "bfloat16",
}


def dtype_string(dtype: int) -> str:
    return str(DTYPE_STRINGS.get(dtype, types_pb2.DataType.Name(dtype)[3:].lower()))


def _array_dtype_enum(array: Array) -> int:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return int(types_pb2.DT_STRING)
    return int(tf.as_dtype(array.dtype).as_datatype_enum)


def ndarray_to_tensor_proto(array: Array) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField: values in the typed repeated fields, not tensor_content."""
    proto = tensor_pb2.TensorProto()
    dtype = _array_dtype_enum(array)
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add().size = int(size)
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
    elif dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend(flat.tolist())
    elif dtype == types_pb2.DT_DOUBLE:
        proto.double_val.extend(flat.tolist())
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        proto.int_val.extend(int(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(int(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_BOOL:
        proto.bool_val.extend(bool(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_UINT32:
        proto.uint32_val.extend(int(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_UINT64:
        proto.uint64_val.extend(int(v) for v in flat.tolist())
    else:
        proto.CopyFrom(tf.make_tensor_proto(array))
    return proto


def _tf_error(e: Exception) -> TFError:
    if isinstance(e, tf.errors.OpError):
        return TFError(int(e.error_code), e.message)
    return TFError(INVALID_ARGUMENT, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _run_signature(model: LoadedModel, signature_name: str, feeds: dict[str, Array]) -> dict[str, Array]:
    signature = model.signature_defs[signature_name]
    for index, (alias, array) in enumerate(feeds.items()):
        expected = signature.inputs[alias].dtype
        got = _array_dtype_enum(array)
        if expected != got:
            raise TFError(
                INVALID_ARGUMENT,
                f"Expects arg[{index}] to be {dtype_string(expected)} but {dtype_string(got)} is provided",
            )
    fn = getattr(model.tf_model, "signatures", {}).get(signature_name)
    if fn is None:
        raise TFError(INTERNAL, f"Signature {signature_name} of the SavedModel is not callable")
    try:
        tensors = {
            alias: tf.constant(array, dtype=tf.as_dtype(signature.inputs[alias].dtype))
            for alias, array in feeds.items()
        }
        outputs = fn(**tensors)
    except Exception as e:
        raise _tf_error(e) from None
    return {alias: np.asarray(value.numpy()) for alias, value in outputs.items()}


def predict(
    core: ServerCore, request: predict_pb2.PredictRequest, inputs: dict[str, Array] | None = None
) -> tuple[predict_pb2.PredictResponse, dict[str, Array]]:
    """TensorflowPredictor::Predict. `inputs` (from REST) replaces decoding request.inputs."""
    if not request.HasField("model_spec"):
        raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
    model = core.get_servable(request.model_spec)
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if signature_name not in model.signature_defs:
        raise TFError(FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')
    signature = model.signature_defs[signature_name]
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = signature_name
    response.model_spec.version.value = model.version
    if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise TFError(
            INTERNAL,
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
            f"{REGRESS_METHOD}}}. Was: {signature.method_name}",
        )
    if inputs is None:
        request_keys = set(request.inputs.keys())
    else:
        request_keys = set(inputs)
    signature_keys = set(signature.inputs.keys())
    if len(request_keys) != len(signature_keys):
        raise TFError(
            INVALID_ARGUMENT,
            f"input size does not match signature: {len(request_keys)}!={len(signature_keys)} "
            f"len({{{','.join(sorted(request_keys))}}}) != len({{{','.join(sorted(signature_keys))}}}). "
            f"Sent extra: {{{','.join(sorted(request_keys - signature_keys))}}}. "
            f"Missing but required: {{{','.join(sorted(signature_keys - request_keys))}}}.",
        )
    feeds: dict[str, Array] = {}
    for alias in sorted(request_keys):
        if alias not in signature_keys:
            raise TFError(
                INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                f"{{{','.join(sorted(signature_keys))}}}.",
            )
        if inputs is not None:
            feeds[alias] = inputs[alias]
        else:
            try:
                feeds[alias] = tf.make_ndarray(request.inputs[alias])
            except Exception:
                raise TFError(INVALID_ARGUMENT, f"tensor parsing error: {alias}") from None
    aliases: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise TFError(
                INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs.keys()))}}}.",
            )
        if alias in aliases:
            raise TFError(INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    if not aliases:
        aliases = sorted(signature.outputs.keys())
    outputs = _run_signature(model, signature_name, feeds)
    selected = {alias: outputs[alias] for alias in aliases}
    for alias, array in selected.items():
        response.outputs[alias].CopyFrom(ndarray_to_tensor_proto(array))
    return response, selected


def _serialized_examples(request_input: input_pb2.Input) -> Array:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in request_input.example_list_with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise TFError(INVALID_ARGUMENT, "Input is empty.")
    return np.array(serialized, dtype=object)


def _signature_for(model: LoadedModel, spec: model_pb2.ModelSpec, method: str, what: str) -> tuple[str, Any]:
    name = spec.signature_name or DEFAULT_SIGNATURE
    if name not in model.signature_defs:
        raise TFError(INVALID_ARGUMENT, f"No signature was found with the name: {name}")
    signature = model.signature_defs[name]
    if signature.method_name != method:
        raise TFError(
            INVALID_ARGUMENT, f"Expected {what} signature method_name to be {method}. Was: {signature.method_name}"
        )
    return name, signature


def classify(
    core: ServerCore, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    if not request.HasField("model_spec"):
        raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
    model = core.get_servable(request.model_spec)
    name, signature = _signature_for(model, request.model_spec, CLASSIFY_METHOD, "classification")
    if len(signature.inputs) != 1:
        raise TFError(INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise TFError(INVALID_ARGUMENT, f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise TFError(FAILED_PRECONDITION, f"No classification inputs found in SignatureDef: {signature}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise TFError(
            FAILED_PRECONDITION,
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {signature}",
        )
    examples = _serialized_examples(request.input)
    outputs = _run_signature(model, name, {"inputs": examples})
    classes = outputs.get("classes") if "classes" in signature.outputs else None
    scores = outputs.get("scores") if "scores" in signature.outputs else None
    num = len(examples)
    for tensor, label, expected in ((classes, "classes", types_pb2.DT_STRING), (scores, "scores", types_pb2.DT_FLOAT)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise TFError(
                INVALID_ARGUMENT, f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}"
            )
        got = _array_dtype_enum(tensor)
        if got != expected:
            expected_name, got_name = types_pb2.DataType.Name(expected), types_pb2.DataType.Name(got)
            raise TFError(INVALID_ARGUMENT, f"Expected {label} Tensor of {expected_name}. Got: {got_name}")
        if tensor.shape[0] != num:
            raise TFError(INVALID_ARGUMENT, f"Expected {label} output batch size of {num}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise TFError(
            INVALID_ARGUMENT,
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}",
        )
    num_classes = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    response = classification_pb2.ClassificationResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = model.version
    for i in range(num):
        classifications = response.result.classifications.add()
        for c in range(num_classes):
            cls = classifications.classes.add()
            if classes is not None:
                cls.label = classes[i, c].decode("utf-8", "replace")
            if scores is not None:
                cls.score = float(scores[i, c])
    return response


def regress(core: ServerCore, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    if not request.HasField("model_spec"):
        raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
    model = core.get_servable(request.model_spec)
    name, signature = _signature_for(model, request.model_spec, REGRESS_METHOD, "regression")
    if len(signature.inputs) != 1:
        raise TFError(INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise TFError(INVALID_ARGUMENT, "Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise TFError(FAILED_PRECONDITION, f"No regression inputs found in SignatureDef: {signature}")
    if "outputs" not in signature.outputs:
        raise TFError(FAILED_PRECONDITION, f"No regression outputs found in SignatureDef: {signature}")
    examples = _serialized_examples(request.input)
    output = _run_signature(model, name, {"inputs": examples})["outputs"]
    num = len(examples)
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise TFError(
            INVALID_ARGUMENT,
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(output.shape)}",
        )
    if output.shape[0] != num:
        raise TFError(
            INVALID_ARGUMENT, f"Input batch size did not match output batch size: {num} vs. {output.shape[0]}"
        )
    if output.dtype != np.float32:
        got = types_pb2.DataType.Name(_array_dtype_enum(output))
        raise TFError(INVALID_ARGUMENT, f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    response = regression_pb2.RegressionResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = model.version
    for value in output.ravel().tolist():
        response.result.regressions.add().value = value
    return response


def get_model_metadata(
    core: ServerCore, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.HasField("model_spec"):
        raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise TFError(INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
    for metadata_field in request.metadata_field:
        if metadata_field != "signature_def":
            # (sic: errors::InvalidArgument concatenates; the %s is printed as is)
            raise TFError(INVALID_ARGUMENT, f"Metadata field %s is not supported{metadata_field}")
    model = core.get_servable(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in model.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = model.name
    response.model_spec.version.value = model.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


# --- JSON (json_tensor.cc) ----------------------------------------------------------------------------------------


class RawNumber(str):
    """A number already formatted the way TF Serving writes it."""


def format_decimal(value: float, single: bool) -> str:
    """WriteDecimal: shortest %g that round-trips (else max_digits10), whole numbers get '.0', NaN/Infinity."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    parsed: float = float(np.float32(float(text))) if single else float(text)
    if parsed != value:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def json_type_string(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def dumps(value: Any, indent: int = 4, level: int = 0, single_line: bool = False) -> str:
    """rapidjson's PrettyWriter, roughly: 4-space indent, arrays on one line where TF Serving asks for it."""
    pad = " " * (indent * (level + 1))
    end_pad = " " * (indent * level)
    if isinstance(value, RawNumber):
        return str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_decimal(value, single=False)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        if not value:
            return "[]"
        if single_line:
            return "[" + ", ".join(dumps(v, indent, level, True) for v in value) + "]"
        return "[\n" + ",\n".join(pad + dumps(v, indent, level + 1) for v in value) + "\n" + end_pad + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {dumps(v, indent, level + 1, single_line)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end_pad + "}"
    return json.dumps(value)


def json_value_to_string(value: Any) -> str:
    return dumps(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float)) and not isinstance(value, bool)


def _type_error(value: Any, dtype: int) -> TFError:
    return TFError(
        INVALID_ARGUMENT,
        f"JSON Value: {json_value_to_string(value)} Type: {json_type_string(value)} is not of expected type: "
        f"{dtype_string(dtype)}",
    )


def _is_lossless(value: Any, digits: int, max_value: float) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if _is_int(value):
        return bool(abs(value) <= (1 << digits) - 1)
    return -max_value <= float(value) <= max_value


def _is_base64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_base64(value: Any) -> bytes:
    if not _is_base64_object(value):
        raise TFError(
            INVALID_ARGUMENT, f"JSON Value: {json_value_to_string(value)} not formatted correctly for base64 data"
        )
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise TFError(INVALID_ARGUMENT, "Unable to base64 decode") from None


def _add_value(value: Any, dtype: int, out: list[Any]) -> None:
    """AddValueToTensor."""
    if dtype == types_pb2.DT_FLOAT:
        if not _is_number(value):
            raise _type_error(value, dtype)
        if not _is_lossless(value, 24, float(np.finfo(np.float32).max)):
            raise TFError(
                INVALID_ARGUMENT,
                f"Cannot convert JSON value: {json_value_to_string(value)} to float without loss of precision.",
            )
        out.append(value)
    elif dtype == types_pb2.DT_DOUBLE:
        if not _is_number(value):
            raise _type_error(value, dtype)
        if not _is_lossless(value, 53, float(np.finfo(np.float64).max)):
            raise TFError(
                INVALID_ARGUMENT,
                f"Cannot convert JSON value: {json_value_to_string(value)} to double without loss of precision.",
            )
        out.append(value)
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        if not (_is_int(value) and -(2**31) <= value < 2**31):
            raise _type_error(value, dtype)
        out.append(value)
    elif dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        out.append(value.encode("utf-8"))
    elif dtype == types_pb2.DT_INT64:
        if not (_is_int(value) and -(2**63) <= value < 2**63):
            raise _type_error(value, dtype)
        out.append(value)
    elif dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        out.append(value)
    elif dtype == types_pb2.DT_UINT32:
        if not (_is_int(value) and 0 <= value < 2**32):
            raise _type_error(value, dtype)
        out.append(value)
    elif dtype == types_pb2.DT_UINT64:
        if not (_is_int(value) and 0 <= value < 2**64):
            raise _type_error(value, dtype)
        out.append(value)
    else:
        raise TFError(
            UNIMPLEMENTED, f"Conversion of JSON Value: {json_value_to_string(value)} to type: {dtype_string(dtype)}"
        )


def _dense_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, dtype: int, shape: list[int], out: list[Any]) -> None:
    """FillTensorProto."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise TFError(
                INVALID_ARGUMENT,
                f"JSON Value: {json_value_to_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}",
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_base64(value))
        else:
            _add_value(value, dtype, out)
        return
    if level >= rank:
        raise TFError(INVALID_ARGUMENT, f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise TFError(
            INVALID_ARGUMENT,
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}",
        )
    for item in value:
        _fill(item, level + 1, dtype, shape, out)


def _to_array(values: list[Any], shape: list[int], dtype: int) -> Array:
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    return np.array(values, dtype=np_dtype).reshape(shape)


def _tensor_from_json(value: Any, dtype: int) -> Array:
    shape = _dense_shape(value)
    out: list[Any] = []
    _fill(value, 0, dtype, shape, out)
    return _to_array(out, shape, dtype)


def parse_json_body(body: bytes) -> dict[str, Any]:
    """ParseJson: a non-empty JSON object (NaN and Infinity accepted)."""
    if not body:
        raise TFError(INVALID_ARGUMENT, "JSON Parse error: The document is empty")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TFError(INVALID_ARGUMENT, f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
    except json.JSONDecodeError as e:
        raise TFError(INVALID_ARGUMENT, f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(doc, dict):
        raise TFError(INVALID_ARGUMENT, f"JSON Value: {json_value_to_string(doc)} Is not object")
    return doc


def _signature_name_from_json(doc: dict[str, Any]) -> str:
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise TFError(
                INVALID_ARGUMENT,
                f"JSON Value: {json_value_to_string(doc)} not formatted correctly. 'signature_name' key must be a "
                "string value.",
            )
        return str(doc["signature_name"])
    return ""


def inputs_from_json(doc: dict[str, Any], tensorinfo: dict[str, int]) -> tuple[str, dict[str, Array]]:
    """FillPredictRequestFromJson after the signature lookup: ('row'|'columnar', name -> array)."""
    if "instances" in doc:
        if "inputs" in doc:
            raise TFError(
                INVALID_ARGUMENT,
                f"JSON Value: {json_value_to_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
                "'instances' keys to exist ",
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise TFError(
                INVALID_ARGUMENT,
                f"JSON Value: {json_value_to_string(doc)} Excepting 'instances' to be an list/array",
            )
        if not instances:
            raise TFError(INVALID_ARGUMENT, f"JSON Value: {json_value_to_string(doc)} No values in 'instances' array")
        return "row", _inputs_from_instances(instances, tensorinfo)
    if "inputs" in doc:
        return "columnar", _inputs_from_columns(doc["inputs"], tensorinfo)
    raise TFError(INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")


def _inputs_from_instances(instances: list[Any], tensorinfo: dict[str, int]) -> dict[str, Array]:
    if not isinstance(instances[0], dict) and len(tensorinfo) > 1:
        raise TFError(
            INVALID_ARGUMENT,
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map",
        )

    def is_object(v: Any) -> bool:
        return isinstance(v, dict) and not _is_base64_object(v)

    objects = is_object(instances[0])
    values: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add_item(item: Any, name: str) -> None:
        if name not in tensorinfo:
            raise TFError(INVALID_ARGUMENT, f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        out: list[Any] = []
        _fill(item, 0, tensorinfo[name], shape, out)
        if name not in sizes:
            sizes[name], shapes[name] = len(out), shape
        elif sizes[name] != len(out):
            raise TFError(INVALID_ARGUMENT, f"Expecting tensor size: {sizes[name]} but got: {len(out)}")
        elif shapes[name] != shape:
            expected = "[" + ",".join(map(str, shapes[name])) + "]"
            raise TFError(INVALID_ARGUMENT, f"Expecting shape {expected} but got: [{','.join(map(str, shape))}]")
        values.setdefault(name, []).extend(out)

    input_names = sorted(tensorinfo)
    for count, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise TFError(INVALID_ARGUMENT, f"Expecting object but got list at item {count} of input list")
            for name, item in element.items():
                try:
                    add_item(item, name)
                except TFError as e:
                    raise TFError(
                        INVALID_ARGUMENT,
                        f"Failed to process element: {count} key: {name} of 'instances' list. Error: {e.to_string()}",
                    ) from None
            if sorted(element) != input_names:
                raise TFError(
                    INVALID_ARGUMENT,
                    f"Failed to process element: {count} of 'instances' list. JSON object: "
                    f"{json_value_to_string(element)} must only have keys: {','.join(input_names)}",
                )
        else:
            if is_object(element):
                raise TFError(INVALID_ARGUMENT, f"Expecting value/list but got object at item {count} of input list")
            try:
                add_item(element, input_names[0])
            except TFError as e:
                raise TFError(
                    INVALID_ARGUMENT, f"Failed to process element: {count} of 'instances' list. Error: {e.to_string()}"
                ) from None
    return {name: _to_array(values[name], [len(instances), *shapes[name]], tensorinfo[name]) for name in sorted(values)}


def _inputs_from_columns(value: Any, tensorinfo: dict[str, int]) -> dict[str, Array]:
    if not isinstance(value, dict) or _is_base64_object(value):
        if len(tensorinfo) > 1:
            raise TFError(
                INVALID_ARGUMENT,
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map",
            )
        name = sorted(tensorinfo)[0]
        return {name: _tensor_from_json(value, tensorinfo[name])}
    result: dict[str, Array] = {}
    for name in sorted(tensorinfo):
        if name not in value:
            raise TFError(INVALID_ARGUMENT, f"Missing named input: {name} in 'inputs' object.")
        result[name] = _tensor_from_json(value[name], tensorinfo[name])
    return result


def _json_scalar(array: Array, index: int, as_bytes: bool) -> Any:
    value = array.flat[index]
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        raw = value if isinstance(value, bytes) else str(value).encode()
        if as_bytes:
            return {"b64": base64.b64encode(raw).decode()}
        return raw.decode("utf-8", "replace")
    if array.dtype.kind == "f":
        return RawNumber(format_decimal(float(value), single=array.dtype == np.float32))
    if array.dtype.kind == "b":
        return bool(value)
    return int(value)


def _json_tensor_values(array: Array, as_bytes: bool, dim: int, offset: list[int]) -> Any:
    """AddTensorValues: nested lists from dimension `dim` on, advancing `offset`."""
    if dim > array.ndim - 1:
        value = _json_scalar(array, offset[0], as_bytes)
        offset[0] += 1
        return value
    return [_json_tensor_values(array, as_bytes, dim + 1, offset) for _ in range(array.shape[dim])]


def json_from_outputs(outputs: dict[str, Array], fmt: str) -> str:
    if not outputs:
        raise TFError(INVALID_ARGUMENT, "Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "row":
        batch = 0
        for name in names:
            array = outputs[name]
            if array.ndim == 0:
                raise TFError(INVALID_ARGUMENT, f"Tensor name: {name} has no shape information ")
            if array.shape[0] < 1:
                raise TFError(INVALID_ARGUMENT, f"Tensor name: {name} has invalid batch size: {array.shape[0]}")
            if batch and batch != array.shape[0]:
                raise TFError(
                    INVALID_ARGUMENT,
                    f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}",
                )
            batch = array.shape[0]
        offsets = {name: [0] for name in names}
        rows: list[Any] = []
        for _ in range(batch):
            row = {
                name: _json_tensor_values(outputs[name], name.endswith("_bytes"), 1, offsets[name]) for name in names
            }
            rows.append(row if len(names) > 1 else row[names[0]])
        body = ",\n".join("        " + dumps(r, level=2, single_line=True) for r in rows)
        return '{\n    "predictions": [\n' + body + "\n    ]\n}"
    columns = {name: _json_tensor_values(outputs[name], name.endswith("_bytes"), 0, [0]) for name in names}
    value: Any = columns if len(names) > 1 else columns[names[0]]
    return '{\n    "outputs": ' + dumps(value, level=1, single_line=True) + "\n}"


def examples_input_from_json(doc: dict[str, Any], method: str) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson."""
    result = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _example_from_json(doc["context"], result.example_list_with_context.context)
    if "examples" not in doc:
        raise TFError(
            INVALID_ARGUMENT,
            f"JSON Value: {json_value_to_string(doc)} When method is {method}, key 'examples' is expected and was "
            "not found",
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise TFError(
            INVALID_ARGUMENT, f"JSON Value: {json_value_to_string(doc)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise TFError(INVALID_ARGUMENT, f"JSON Value: {json_value_to_string(doc)} 'examples' value is an empty array")
    for value in examples:
        target = result.example_list_with_context.examples.add() if has_context else result.example_list.examples.add()
        _example_from_json(value, target)
    return result


def _example_from_json(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise TFError(INVALID_ARGUMENT, f"Example must be JSON object but got JSON {json_type_string(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)


def _add_feature_value(value: Any, name: str, feature: Any) -> None:
    kind = feature.WhichOneof("kind")

    def check(expected: str) -> None:
        if kind not in (None, expected):
            kinds = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
            raise TFError(
                INVALID_ARGUMENT,
                f"Unexpected element type in feature: {name} expecting type: {kinds.get(kind, 'UNKNOWN')}",
            )

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_base64_object(value)):
        raise TFError(
            INVALID_ARGUMENT, f"Feature: {name} has element with unexpected JSON type: {json_type_string(value)}"
        )
    if isinstance(value, bool):
        check("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        check("bytes_list")
        feature.bytes_list.value.append(_decode_base64(value))
    elif isinstance(value, str):
        check("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        check("float_list")
        if not _is_lossless(value, 24, float(np.finfo(np.float32).max)):
            raise TFError(
                INVALID_ARGUMENT,
                f"Cannot convert JSON value: {json_value_to_string(value)} to float without loss of precision.",
            )
        feature.float_list.value.append(value)
    else:
        check("int64_list")
        if value >= 2**63:
            raise TFError(INVALID_ARGUMENT, f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)


# --- gRPC services (model_service_impl.cc, prediction_service_impl.cc, grpc_status_util.cc) -----------------------


def _abort(context: grpc.ServicerContext, error: TFError) -> Any:
    message = error.message if len(error.message) <= 1024 else error.message[:1024] + "...TRUNCATED"
    context.abort(GRPC_CODES.get(error.code, grpc.StatusCode.UNKNOWN), message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.core.get_model_status(request)
        except TFError as e:
            return _abort(context, e)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        config = request.config
        error: TFError | None = None
        if config.WhichOneof("config") == "model_config_list":
            for index, entry in enumerate(config.model_config_list.config):
                log.info(
                    "Config entry index : %d path : %s name : %s platform : %s",
                    index,
                    entry.base_path,
                    entry.name,
                    entry.model_platform,
                )
            try:
                self.core.reload_config(config)
            except TFError as e:
                error = e
            except Exception as e:  # an emulator bug: say so
                log.exception("reload failed")
                error = TFError(INTERNAL, f"TF Serving emulator internal error: {e!r}")
        else:
            error = TFError(
                INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                "currently supported",
            )
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = error.code if error else OK
        if error is not None:
            log.error("ReloadConfig failed: %s", error.message)
            response.status.error_message = error.message
            return _abort(context, error)
        return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def _call(self, fn: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        try:
            return fn()
        except TFError as e:
            return _abort(context, e)
        except Exception as e:  # an emulator bug: say so
            log.exception("gRPC call failed")
            return _abort(context, TFError(INTERNAL, f"TF Serving emulator internal error: {e!r}"))

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: predict(self.core, request)[0], context)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: classify(self.core, request), context)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: regress(self.core, request), context)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: get_model_metadata(self.core, request), context)

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext) -> Any:
        return _abort(context, TFError(UNIMPLEMENTED, "MultiInference is not supported by the TF Serving emulator"))


# --- REST (http_rest_api_handler.cc, http_rest_api_util.cc, http_server.cc) ---------------------------------------

PREDICTION_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_RE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
V1_RE = re.compile(r"(?i)/v1/.*", re.DOTALL)


def _model_spec(name: str, version: int | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None and label is not None:
        raise TFError(
            INVALID_ARGUMENT, f"Both model version ({version}) and model version label ({label}) cannot be supplied."
        )
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


class RestApi:
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def process(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        """HttpRestApiHandler::ProcessRequest -> (HTTP status, JSON body)."""
        try:
            output = self._process(method, path, body)
            return 200, output
        except TFError as e:
            return HTTP_STATUS.get(e.code, 500), '{ "error": ' + json.dumps(e.message) + " }"
        except Exception as e:  # an emulator bug: say so rather than drop the connection
            log.exception("REST %s %s failed", method, path)
            return 500, '{ "error": ' + json.dumps(f"TF Serving emulator internal error: {e!r}") + " }"

    def _process(self, method: str, path: str, body: bytes) -> str:
        malformed = TFError(INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        if method == "POST":
            m = PREDICTION_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version_str, label, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        elif method == "GET":
            m = STATUS_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version_str, label, verb = m.group(1) or "", m.group(2), m.group(3), m.group(4) or ""
        else:
            raise malformed
        name = urllib.parse.unquote(name)
        version = int(version_str) if version_str else None
        if label:
            label = urllib.parse.unquote(label)
        if method == "POST":
            if verb == "predict":
                return self._predict(name, version, label, body)
            if verb == "classify":
                return self._classify(name, version, label, body)
            if verb == "regress":
                return self._regress(name, version, label, body)
            raise malformed  # e.g. ":PREDICT" matches the case-insensitive pattern but no handler
        if verb == "metadata":
            return self._metadata(name, version, label)
        return self._status(name, version, label)

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        doc = parse_json_body(body)
        request.model_spec.signature_name = _signature_name_from_json(doc)
        model = self.core.get_servable(request.model_spec)  # GetInfoMap
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name not in model.signature_defs:
            raise TFError(INVALID_ARGUMENT, f'Serving signature name: "{signature_name}" not found in signature def')
        tensorinfo = {k: v.dtype for k, v in model.signature_defs[signature_name].inputs.items()}
        if not tensorinfo:
            raise TFError(
                INVALID_ARGUMENT,
                f"Failed to get input map for signature: {request.model_spec.signature_name or 'DEFAULT'}",
            )
        fmt, inputs = inputs_from_json(doc, tensorinfo)
        _, outputs = predict(self.core, request, inputs)
        return json_from_outputs(outputs, fmt)

    def _classify(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        doc = parse_json_body(body)
        request.model_spec.signature_name = _signature_name_from_json(doc)
        request.input.CopyFrom(examples_input_from_json(doc, "classify"))
        result = classify(self.core, request).result
        if not result.classifications:
            raise TFError(INVALID_ARGUMENT, "Cannot convert empty ClassificationResults to JSON")
        rows = [
            [[c.label, RawNumber(format_decimal(c.score, True))] for c in cls.classes] for cls in result.classifications
        ]
        return (
            '{\n    "results": [\n' + ",\n".join("        " + dumps(r, single_line=True) for r in rows) + "\n    ]\n}"
        )

    def _regress(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = regression_pb2.RegressionRequest()
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        doc = parse_json_body(body)
        request.model_spec.signature_name = _signature_name_from_json(doc)
        request.input.CopyFrom(examples_input_from_json(doc, "classify"))  # (sic: the message says classify)
        result = regress(self.core, request).result
        if not result.regressions:
            raise TFError(INVALID_ARGUMENT, "Cannot convert empty RegressionResults to JSON")
        values = [RawNumber(format_decimal(r.value, True)) for r in result.regressions]
        return '{\n    "results": ' + dumps(values, single_line=True) + "\n}"

    def _status(self, name: str, version: int | None, label: str | None) -> str:
        if not name:
            raise TFError(INVALID_ARGUMENT, "Missing model name in request.")
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        response = self.core.get_model_status(request)
        return str(json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1))

    def _metadata(self, name: str, version: int | None, label: str | None) -> str:
        if not name:
            raise TFError(INVALID_ARGUMENT, "Missing model name in request.")
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.metadata_field.append("signature_def")
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        response = get_model_metadata(self.core, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)

        def to_json(message: Any) -> str:
            return str(
                json_format.MessageToJson(
                    message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True, indent=1
                )
            )

        return (
            '{\n"model_spec":'
            + to_json(response.model_spec)
            + ',\n"metadata": {"signature_def": '
            + to_json(signature_map)
            + "}\n}\n"
        )


class _HttpServer(ThreadingHTTPServer):
    request_queue_size = 512  # the listen backlog (the default 5 drops a gateway's bursts of connections)
    daemon_threads = True


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfserving-emulator"
    api: RestApi

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urllib.parse.urlsplit(self.path).path
        if not V1_RE.fullmatch(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, output = self.api.process(self.command, path, body)
        payload = output.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


# --- main ---------------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.tfserving_emulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address both servers bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", "--port", dest="grpc_port", type=int, required=True)
    p.add_argument("--rest-port", "--rest_api_port", dest="rest_port", type=int, default=0, help="0: no REST")
    p.add_argument("--model-config-file", "--model_config_file", dest="model_config_file")
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds added to every load")
    p.add_argument("--unload-delay", type=float, default=0.0, help="seconds added to every unload")
    p.add_argument("--load-log", help="append 'load <name> <version>' per load attempt")
    p.add_argument("--max-models", type=int, help="loads fail (RESOURCE_EXHAUSTED) beyond N versions holding resources")
    p.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0)
    p.add_argument("--fail-if-no-model-versions-found", action="store_true")
    p.add_argument("--max-num-load-retries", type=int, default=5)
    p.add_argument("--load-retry-interval-seconds", type=float, default=60.0)
    p.add_argument("--num-load-threads", type=int, default=0)
    p.add_argument("--num-unload-threads", type=int, default=0)
    p.add_argument("--num-initial-load-threads", type=int, default=max(1, 4 * (os.cpu_count() or 1)))
    p.add_argument("--manage-state-interval-seconds", type=float, default=0.1)
    p.add_argument("--allow-version-labels-for-unavailable-models", action="store_true")
    p.add_argument("--grpc-max-threads", type=int, default=32)
    p.add_argument("--tf-threads", type=int, default=1, help="TensorFlow intra-op and inter-op threads")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s.%(msecs)03d %(levelname).1s %(threadName)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.tf_threads)

    stopping = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        if not serving.is_set():
            os._exit(0)  # still loading the initial config: nothing to close
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    bus = EventBus()
    loader = SavedModelLoader(LoaderOptions(args.load_delay, args.unload_delay, args.load_log), stopping)
    manager = Manager(
        bus,
        loader,
        ManagerOptions(
            num_load_threads=args.num_load_threads,
            num_unload_threads=args.num_unload_threads,
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval=args.load_retry_interval_seconds,
            manage_state_interval=args.manage_state_interval_seconds,
            max_models=args.max_models,
        ),
        stopping,
    )
    core = ServerCore(
        manager,
        bus,
        CoreOptions(
            file_system_poll_wait=args.file_system_poll_wait_seconds,
            fail_if_no_model_versions_found=args.fail_if_no_model_versions_found,
            num_initial_load_threads=args.num_initial_load_threads,
            allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        ),
    )

    if args.model_config_file:
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(Path(args.model_config_file).read_text(), config)
        except (OSError, text_format.ParseError) as e:
            print(f"Invalid protobuf file: '{args.model_config_file}' ({e})", file=sys.stderr)
            return 1
        if config.WhichOneof("config") == "custom_model_config":
            print("ModelServer does not yet support custom model config.", file=sys.stderr)
            return 1
        try:
            core.reload_config(config)
        except TFError as e:
            print(f"Failed to start server. Error: {e.to_string()}", file=sys.stderr)
            return 255

    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ],
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), grpc_server)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), grpc_server)
    try:
        bound = grpc_server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    except RuntimeError as e:
        bound = 0
        log.error("%s", e)
    if bound == 0:
        print(f"Failed to start server. Could not bind gRPC port {args.host}:{args.grpc_port}", file=sys.stderr)
        return 3
    grpc_server.start()
    http_server: ThreadingHTTPServer | None = None
    if args.rest_port:
        handler = type("Handler", (_HttpHandler,), {"api": RestApi(core)})
        try:
            http_server = _HttpServer((args.host, args.rest_port), handler)
        except OSError as e:
            print(
                f"Failed to start server. Could not bind REST port {args.host}:{args.rest_port}: {e}", file=sys.stderr
            )
            grpc_server.stop(0)
            return 3
        threading.Thread(target=http_server.serve_forever, name="http", daemon=True).start()
    serving.set()
    print(f"Running gRPC ModelServer at {args.host}:{args.grpc_port} ...", file=sys.stderr, flush=True)
    if http_server is not None:
        print(f"Exporting HTTP/REST API at:{args.host}:{args.rest_port} ...", file=sys.stderr, flush=True)

    while not stopping.wait(1.0):
        pass
    grpc_server.stop(0)
    if http_server is not None:
        http_server.shutdown()
        http_server.server_close()
    sys.stderr.flush()
    os._exit(0)  # handler threads may be blocked in a reload (as in TF Serving): do not join them


if __name__ == "__main__":
    sys.exit(main())
