"""The typed, bytes-in / bytes-out API over modelyard's TF Serving messages (see the package docstring)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, wrappers_pb2

from adapters import protowire

ARTIFACT = "descriptors.binpb"
"""The FileDescriptorSet compiled from this package's .proto files (see `adapters.tfserving_proto.build`)."""

PACKAGE = "tensorflow.serving"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

VersionState = Literal["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


def _load_pool() -> Any:
    """A private descriptor pool: the full names are TF Serving's, so the default pool (where the official
    tensorflow_serving modules register, when something imports them) must not see these."""
    pool = descriptor_pool.DescriptorPool()
    # ModelSpec.version is a google.protobuf.Int64Value: take that file from the protobuf runtime itself.
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    data = resources.files(__package__).joinpath(ARTIFACT).read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


_POOL = _load_pool()


def _message_class(name: str) -> Any:
    """The message class of `tensorflow.serving.<name>` in the private pool. For this package and its tests."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


_ModelSpec = _message_class("ModelSpec")
_ReloadConfigRequest = _message_class("ReloadConfigRequest")
_ReloadConfigResponse = _message_class("ReloadConfigResponse")
_GetModelStatusRequest = _message_class("GetModelStatusRequest")
_GetModelStatusResponse = _message_class("GetModelStatusResponse")

_STATE_ENUM = _POOL.FindEnumTypeByName(f"{PACKAGE}.ModelVersionStatus.State")
_STATE_NAMES: dict[int, VersionState] = {v.number: cast(VersionState, v.name) for v in _STATE_ENUM.values}
_STATE_NUMBERS: dict[str, int] = {name: number for number, name in _STATE_NAMES.items()}


def _methods() -> dict[str, tuple[str, str]]:
    methods = {}
    for service in (PREDICTION_SERVICE, MODEL_SERVICE):
        for method in _POOL.FindServiceByName(service).methods:
            methods[f"/{service}/{method.name}"] = (method.input_type.name, method.output_type.name)
    return methods


METHODS: Mapping[str, tuple[str, str]] = _methods()
"""gRPC method path -> (request message, response message), e.g.
"/tensorflow.serving.PredictionService/Predict" -> ("PredictRequest", "PredictResponse")."""

# Where each message keeps its ModelSpec: field names from the message down to the ModelSpec. A first step that
# is a repeated field (MultiInference's tasks and results) holds one ModelSpec per element.
_SPEC_FIELDS: dict[str, tuple[str, ...]] = {
    "PredictRequest": ("model_spec",),
    "PredictResponse": ("model_spec",),
    "ClassificationRequest": ("model_spec",),
    "ClassificationResponse": ("model_spec",),
    "RegressionRequest": ("model_spec",),
    "RegressionResponse": ("model_spec",),
    "GetModelMetadataRequest": ("model_spec",),
    "GetModelMetadataResponse": ("model_spec",),
    "GetModelStatusRequest": ("model_spec",),
    "MultiInferenceRequest": ("tasks", "model_spec"),
    "MultiInferenceResponse": ("results", "model_spec"),
}


def _field_numbers(name: str, fields: tuple[str, ...]) -> tuple[int, ...]:
    descriptor = _POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")
    numbers = []
    for field_name in fields:
        field = descriptor.fields_by_name[field_name]
        numbers.append(field.number)
        descriptor = field.message_type
    return tuple(numbers)


_SPEC_PATHS: dict[str, tuple[int, ...]] = {name: _field_numbers(name, path) for name, path in _SPEC_FIELDS.items()}

SPEC_MESSAGES: frozenset[str] = frozenset(_SPEC_FIELDS)
"""The messages `read_model_spec` and `rewrite_model_name` take."""


# -- model control: ModelService/HandleReloadConfigRequest ----------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One model of a TF Serving model_config_list. `versions` () = the latest version only (TF Serving's default
    policy); otherwise exactly these versions (the `specific` policy)."""

    name: str
    base_path: str
    model_platform: str = "tensorflow"
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a TF Serving model needs a name")
        if not self.base_path:
            raise ValueError(f"model {self.name!r} needs a base_path (the directory that holds its versions)")
        versions = tuple(self.versions)
        if any(v < 0 for v in versions):
            raise ValueError(f"model {self.name!r}: versions are non-negative integers, got {versions}")
        object.__setattr__(self, "versions", versions)


def reload_config_request(models: Sequence[ModelEntry]) -> bytes:
    """ReloadConfigRequest{config{model_config_list{config: one per model}}}. The list replaces the server's whole
    configuration: models it does not name get unloaded. An empty list is sent as an empty model_config_list
    (which unloads everything), not as an empty config (which TF Serving ignores)."""
    duplicates = sorted(name for name, count in Counter(m.name for m in models).items() if count > 1)
    if duplicates:
        raise ValueError(f"TF Serving rejects a config that lists a model twice: {duplicates}")
    request = _ReloadConfigRequest()
    config_list = request.config.model_config_list
    config_list.SetInParent()
    for model in models:
        config = config_list.config.add()
        config.name = model.name
        config.base_path = model.base_path
        config.model_platform = model.model_platform
        if model.versions:
            config.model_version_policy.specific.versions.extend(model.versions)
    return cast(bytes, request.SerializeToString())


def _parse(cls: Any, what: str, raw: bytes) -> Any:
    try:
        return cls.FromString(raw)
    except message.DecodeError as exc:
        raise ValueError(f"{what}: not a valid protobuf message ({exc})") from None


def reload_config_status(raw: bytes) -> tuple[int, str]:
    """(error_code, error_message) of a ReloadConfigResponse's status; (0, "") = OK. error_code is a
    tensorflow.error.Code (3 INVALID_ARGUMENT, 5 NOT_FOUND, ... the same numbers as gRPC's status codes)."""
    response = _parse(_ReloadConfigResponse, "ReloadConfigResponse", raw)
    return int(response.status.error_code), str(response.status.error_message)


# -- model status: ModelService/GetModelStatus ----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionStatus:
    """One ModelVersionStatus: a version, its state, and the error its last transition ended with (0, "" = none)."""

    version: int
    state: VersionState
    error_code: int = 0
    error_message: str = ""


def model_status_request(name: str, version: int | None = None) -> bytes:
    """GetModelStatusRequest for one model; no version = the status of every version the server knows."""
    if not name:
        raise ValueError("GetModelStatusRequest needs a model name")
    request = _GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return cast(bytes, request.SerializeToString())


def model_status_response(raw: bytes) -> list[VersionStatus]:
    """The versions of a GetModelStatusResponse, in the server's order. A state number this copy of the enum
    does not know reads as "UNKNOWN"."""
    response = _parse(_GetModelStatusResponse, "GetModelStatusResponse", raw)
    return [
        VersionStatus(
            version=int(s.version),
            state=_STATE_NAMES.get(int(s.state), "UNKNOWN"),
            error_code=int(s.status.error_code),
            error_message=str(s.status.error_message),
        )
        for s in response.model_version_status
    ]


def model_status_response_bytes(statuses: Sequence[VersionStatus]) -> bytes:
    """A GetModelStatusResponse listing `statuses` (the message names no model: the request did)."""
    response = _GetModelStatusResponse()
    for status in statuses:
        if status.state not in _STATE_NUMBERS:
            raise ValueError(f"unknown model version state {status.state!r}; expected one of {list(_STATE_NUMBERS)}")
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = _STATE_NUMBERS[status.state]
        if status.error_code or status.error_message:
            entry.status.error_code = status.error_code
            entry.status.error_message = status.error_message
    return cast(bytes, response.SerializeToString())


# -- the data plane: model_spec of PredictionService / ModelService requests and responses --------------------------


@dataclass(frozen=True)
class SpecInfo:
    """A ModelSpec: version None = not set (the server picks its latest), version_label None = not set."""

    name: str
    version: int | None
    version_label: str | None
    signature_name: str


def _path(message_name: str) -> tuple[int, ...]:
    try:
        return _SPEC_PATHS[message_name]
    except KeyError:
        raise KeyError(
            f"{message_name!r} is not a TF Serving message with a model_spec; one of {sorted(_SPEC_PATHS)}"
        ) from None


def _spec_parts(buf: memoryview, pos: int, end: int, path: tuple[int, ...]) -> list[list[memoryview]]:
    """The ModelSpec records found along `path`: one list per ModelSpec slot (several records in one slot are
    merged, as protobuf does), one slot per element of a repeated first step."""
    number, rest = path[0], path[1:]
    if not rest:
        return [[buf[p:e] for _, t, _, p, e in protowire.records(buf, pos, end, only=(number,)) if t == protowire.LEN]]
    slots: list[list[memoryview]] = []
    for _, t, _, p, e in protowire.records(buf, pos, end, only=(number,)):
        if t == protowire.LEN:
            slots.extend(_spec_parts(buf, p, e, rest))
    return slots


def _parse_spec(what: str, parts: list[memoryview]) -> Any:
    return _parse(_ModelSpec, what, b"".join(parts))


def read_model_spec(message_name: str, raw: bytes) -> SpecInfo:
    """The model_spec of a PredictionService or ModelService message (one of `SPEC_MESSAGES`), parsing nothing
    else. MultiInference: TF Serving requires all tasks to name the same model and serves the first task's
    version, so this checks the former and returns the first task's spec.

    Raises ValueError, with a text fit for an INVALID_ARGUMENT answer, when the bytes are not that message or the
    model_spec or its name is missing. Raises KeyError for a message name not in `SPEC_MESSAGES`.
    """
    path = _path(message_name)
    buf = memoryview(raw)
    try:
        slots = _spec_parts(buf, 0, len(buf), path)
    except protowire.WireError as exc:
        raise ValueError(f"{message_name}: not a valid protobuf message ({exc})") from None
    if len(path) == 1:
        where = [f"{message_name}.model_spec"]
    else:
        container = _SPEC_FIELDS[message_name][0]
        if not slots:
            raise ValueError(f"{message_name} has no {container}: add at least one, with model_spec.name set")
        where = [f"{message_name}.{container}[{i}].model_spec" for i in range(len(slots))]
    specs = []
    for label, parts in zip(where, slots, strict=True):
        if not parts:
            raise ValueError(f"{label} is missing: set model_spec.name to the model to call")
        spec = _parse_spec(label, parts)
        if not spec.name:
            raise ValueError(f"{label}.name is empty: set it to the model to call")
        specs.append(spec)
    names = sorted({spec.name for spec in specs})
    if len(names) > 1:
        raise ValueError(f"{message_name}: all tasks must name the same model, got {names}")
    first = specs[0]
    choice = first.WhichOneof("version_choice")
    return SpecInfo(
        name=str(first.name),
        version=int(first.version.value) if choice == "version" else None,
        version_label=str(first.version_label) if choice == "version_label" else None,
        signature_name=str(first.signature_name),
    )


def _rewrite(buf: memoryview, pos: int, end: int, path: tuple[int, ...], name: str) -> list[bytes | memoryview] | None:
    """buf[pos:end] as chunks with every ModelSpec along `path` renamed, or None when nothing changes."""
    number, rest = path[0], path[1:]
    found = [
        (start, p, e) for _, t, start, p, e in protowire.records(buf, pos, end, only=(number,)) if t == protowire.LEN
    ]
    if not found:
        return None
    chunks: list[bytes | memoryview] = []
    cursor = pos
    if not rest:
        spec = _parse_spec("model_spec", [buf[p:e] for _, p, e in found])
        if len(found) == 1 and spec.name == name:
            return None
        spec.name = name
        # One record, where the first was (a repeated model_spec is merged into it, as any parser would).
        chunks += [buf[cursor : found[0][0]], protowire.encode_len(number, spec.SerializeToString())]
        cursor = found[0][2]
        for start, _, e in found[1:]:
            chunks.append(buf[cursor:start])
            cursor = e
    else:
        changed = False
        for start, p, e in found:
            inner = _rewrite(buf, p, e, rest, name)
            if inner is not None:
                chunks += [buf[cursor:start], protowire.encode_len(number, b"".join(inner))]
                cursor = e
                changed = True
        if not changed:
            return None
    chunks.append(buf[cursor:end])
    return chunks


def rewrite_model_name(message_name: str, raw: bytes, name: str) -> bytes:
    """The same message with model_spec.name set to `name` (in every task or result of a MultiInference message).

    Every other byte is kept, in place: tensors and examples are never parsed. A message without a model_spec is
    returned unchanged, and so is one that already names `name`. Raises ValueError on bytes that are not a protobuf
    message (or whose model_spec is not a ModelSpec), KeyError for a message name not in `SPEC_MESSAGES`.
    """
    if not name:
        raise ValueError("the new model name is empty")
    path = _path(message_name)
    buf = memoryview(raw)
    try:
        chunks = _rewrite(buf, 0, len(buf), path, name)
    except protowire.WireError as exc:
        raise ValueError(f"{message_name}: not a valid protobuf message ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{message_name}: {exc}") from None
    return raw if chunks is None else b"".join(chunks)
