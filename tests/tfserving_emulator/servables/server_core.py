"""ServerCore (server_core.cc): config reloads (validation, first config vs later ones, waiting for new
models), version labels, resolving a ModelSpec to a loaded servable, and GetModelStatus."""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from dataclasses import dataclass

from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.tfserving_emulator.servables.file_system_source import FileSystemSource, ServableToMonitor
from tests.tfserving_emulator.servables.loader import LoadedModel
from tests.tfserving_emulator.servables.manager import Manager
from tests.tfserving_emulator.servables.state_monitor import (
    AVAILABLE,
    STATE_PROTO,
    EventBus,
    ServableRequestT,
    ServableState,
    StateMonitor,
    id_debug_string,
)
from tests.tfserving_emulator.status import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    OK,
    UNAVAILABLE,
    UNKNOWN,
    TFError,
)

log = logging.getLogger("tfserving_emulator")


SUPPORTED_PLATFORMS = ("tensorflow",)


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
