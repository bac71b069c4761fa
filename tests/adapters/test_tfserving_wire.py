"""modelyard's TF Serving messages against the official ones (tensorflow-serving-api, a dev dependency): same
field numbers, and bytes that each side reads as the other meant, in both directions."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pool
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_service_pb2,  # noqa: F401  (registers ModelService in the default pool)
    predict_pb2,
    prediction_service_pb2,  # noqa: F401  (registers PredictionService in the default pool)
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: F401

from adapters.protowire import records
from adapters.tfserving_proto import build
from adapters.tfserving_proto.messages import (
    _POOL,
    METHODS,
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    SPEC_MESSAGES,
    ModelEntry,
    SpecInfo,
    VersionStatus,
    _message_class,
    model_status_request,
    model_status_response,
    model_status_response_bytes,
    read_model_spec,
    reload_config_request,
    reload_config_status,
    rewrite_model_name,
)
from tests.adapters.test_protowire import MALFORMED, damaged

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = descriptor_pool.Default()

# Messages declared with every field the official one has (the others are partial on purpose).
COMPLETE = {
    "tensorflow.serving.ModelSpec",
    "tensorflow.serving.StatusProto",
    "tensorflow.serving.GetModelStatusRequest",
    "tensorflow.serving.GetModelStatusResponse",
    "tensorflow.serving.ModelVersionStatus",
    "tensorflow.serving.InferenceTask",
    "tensorflow.serving.MultiInferenceResponse",
    "tensorflow.serving.ModelConfigList",
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy",
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Latest",
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.All",
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific",
    "tensorflow.serving.ModelConfig.VersionLabelsEntry",
}


# -- the schema -----------------------------------------------------------------------------------------------------


def our_messages() -> list[Any]:
    found = []

    def walk(descriptor: Any) -> None:
        found.append(descriptor)
        for nested in descriptor.nested_types:
            walk(nested)

    for name in build.proto_files():
        for descriptor in _POOL.FindFileByName(name).message_types_by_name.values():
            walk(descriptor)
    return found


def test_every_declared_field_has_tf_servings_number_and_shape() -> None:
    messages = our_messages()
    assert len(messages) > 25
    for ours in messages:
        official = OFFICIAL.FindMessageTypeByName(ours.full_name)
        for field in ours.fields:
            where = f"{ours.full_name}.{field.name}"
            assert field.name in official.fields_by_name, where
            theirs = official.fields_by_name[field.name]
            assert field.number == theirs.number, where
            assert field.is_repeated == theirs.is_repeated, where
            assert field.has_presence == theirs.has_presence, where
            assert field.is_packed == theirs.is_packed, where
            if where == "tensorflow.serving.StatusProto.error_code":
                # declared int32: the same varint as the official tensorflow.error.Code enum
                assert (field.type, theirs.type) == (field.TYPE_INT32, field.TYPE_ENUM)
            else:
                assert field.type == theirs.type, where
            if field.message_type is not None:
                assert field.message_type.full_name == theirs.message_type.full_name, where
            if field.enum_type is not None:
                assert field.enum_type.full_name == theirs.enum_type.full_name, where
            oneof = field.containing_oneof.name if field.containing_oneof else None
            assert oneof == (theirs.containing_oneof.name if theirs.containing_oneof else None), where
        if ours.full_name in COMPLETE:
            assert set(ours.fields_by_name) == set(official.fields_by_name), ours.full_name
        for enum in ours.enum_types:
            theirs_enum = official.enum_types_by_name[enum.name]
            assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in theirs_enum.values]


def test_model_version_states_are_tf_servings() -> None:
    state = get_model_status_pb2.ModelVersionStatus.State
    assert {name: state.Value(name) for name in state.keys()} == {
        "UNKNOWN": 0,
        "START": 10,
        "LOADING": 20,
        "AVAILABLE": 30,
        "UNLOADING": 40,
        "END": 50,
    }


def test_method_table_matches_the_official_services() -> None:
    expected = {}
    for service in (PREDICTION_SERVICE, MODEL_SERVICE):
        for method in OFFICIAL.FindServiceByName(service).methods:
            expected[f"/{service}/{method.name}"] = (method.input_type.name, method.output_type.name)
    assert dict(METHODS) == expected
    spec_carrying = {name for pair in expected.values() for name in pair} - {
        "GetModelStatusResponse",
        "ReloadConfigRequest",
        "ReloadConfigResponse",
    }
    assert spec_carrying == SPEC_MESSAGES


def test_our_pool_is_private() -> None:
    assert _POOL is not OFFICIAL
    official = OFFICIAL.FindMessageTypeByName("tensorflow.serving.PredictRequest")
    assert official is predict_pb2.PredictRequest.DESCRIPTOR
    assert "inputs" in official.fields_by_name
    ours = _message_class("PredictRequest")
    assert ours is not predict_pb2.PredictRequest
    assert list(ours.DESCRIPTOR.fields_by_name) == ["model_spec"]


# -- official messages with real payloads ---------------------------------------------------------------------------


def tensor_inputs() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    inputs = {
        "f32": tf.make_tensor_proto(rng.random((2, 3), dtype=np.float32)),
        "f16": tf.make_tensor_proto(np.array([[1.5, -2.0]], dtype=np.float16)),
        "f64": tf.make_tensor_proto(np.array([1e300, -0.0], dtype=np.float64)),
        "i64": tf.make_tensor_proto(np.arange(-5, 5, dtype=np.int64)),
        "u8": tf.make_tensor_proto(np.arange(256, dtype=np.uint8).reshape(16, 16)),
        "bool": tf.make_tensor_proto(np.array([True, False, True])),
        "str": tf.make_tensor_proto([b"caf\xc3\xa9", b"\x00\xffbinary", b""]),
        # 4 MB: the gRPC default limit
        "big": tf.make_tensor_proto(rng.random(1 << 20, dtype=np.float32)),
    }
    scalar = inputs["scalar_vals"] = tf.make_tensor_proto(0.0, dtype=tf.float32)
    scalar.ClearField("float_val")
    scalar.float_val.extend([0.25, 0.5])  # float_val instead of tensor_content
    return inputs


def with_spec(message: Any, name: str = "resnet", version: int | None = 7, label: str | None = None) -> Any:
    spec = message.model_spec
    spec.name = name
    spec.signature_name = "serving_default"
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return message


def predict_request(version: int | None = 7, label: str | None = None) -> Any:
    request = with_spec(predict_pb2.PredictRequest(), version=version, label=label)
    for key, tensor in tensor_inputs().items():
        request.inputs[key].CopyFrom(tensor)
    request.output_filter.extend(["probabilities", "classes"])
    request.client_id = b"client-7"
    return request


def examples_input(with_context: bool = False) -> Any:
    examples = []
    for i in range(3):
        example = example_pb2.Example()
        features = example.features.feature
        features["age"].int64_list.value.append(30 + i)
        features["score"].float_list.value.extend([0.5 * i, 1.5])
        features["city"].bytes_list.value.append(f"city-{i}".encode())
        examples.append(example)
    message = input_pb2.Input()
    if with_context:
        message.example_list_with_context.examples.extend(examples)
        message.example_list_with_context.context.features.feature["country"].CopyFrom(
            feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[b"fr"]))
        )
    else:
        message.example_list.examples.extend(examples)
    return message


def classification_request() -> Any:
    request = with_spec(classification_pb2.ClassificationRequest(), version=None, label="stable")
    request.input.CopyFrom(examples_input())
    return request


def regression_request() -> Any:
    request = with_spec(regression_pb2.RegressionRequest(), version=3)
    request.input.CopyFrom(examples_input(with_context=True))
    return request


def metadata_request() -> Any:
    request = with_spec(get_model_metadata_pb2.GetModelMetadataRequest(), version=None)
    request.metadata_field.append("signature_def")
    return request


def multi_inference_request() -> Any:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method, version in (("classify_x", "tensorflow/serving/classify", 4), ("regress_x", "", None)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "resnet"
        task.model_spec.signature_name = signature
        if version is not None:
            task.model_spec.version.value = version
    request.input.CopyFrom(examples_input())
    return request


def predict_response() -> Any:
    response = with_spec(predict_pb2.PredictResponse())
    response.outputs["scores"].CopyFrom(tf.make_tensor_proto(np.linspace(0, 1, 1000, dtype=np.float32)))
    response.outputs["labels"].CopyFrom(tf.make_tensor_proto([b"cat", b"dog"]))
    return response


def classification_response() -> Any:
    response = with_spec(classification_pb2.ClassificationResponse(), version=2)
    for label, score in (("cat", 0.9), ("dog", 0.1)):
        response.result.classifications.add().classes.add(label=label, score=score)
    return response


def regression_response() -> Any:
    response = with_spec(regression_pb2.RegressionResponse(), version=2)
    response.result.regressions.add(value=1.25)
    response.result.regressions.add(value=-3.0)
    return response


def metadata_response() -> Any:
    response = with_spec(get_model_metadata_pb2.GetModelMetadataResponse(), version=2)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signature = signatures.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    signature.inputs["x"].CopyFrom(meta_graph_pb2.TensorInfo(name="x:0", dtype=tf.float32.as_datatype_enum))
    response.metadata["signature_def"].Pack(signatures)
    return response


def multi_inference_response() -> Any:
    response = inference_pb2.MultiInferenceResponse()
    first = response.results.add()
    with_spec(first, version=4)
    first.classification_result.classifications.add().classes.add(label="a", score=0.5)
    second = response.results.add()
    with_spec(second, version=4)
    second.regression_result.regressions.add(value=2.0)
    return response


MESSAGES = {
    "PredictRequest": predict_request,
    "ClassificationRequest": classification_request,
    "RegressionRequest": regression_request,
    "GetModelMetadataRequest": metadata_request,
    "MultiInferenceRequest": multi_inference_request,
    "PredictResponse": predict_response,
    "ClassificationResponse": classification_response,
    "RegressionResponse": regression_response,
    "GetModelMetadataResponse": metadata_response,
    "MultiInferenceResponse": multi_inference_response,
}


def renamed(message: Any, name: str) -> Any:
    """The official message with model_spec.name (of every task/result) set to `name`."""
    copy = type(message)()
    copy.CopyFrom(message)
    for holder in getattr(copy, "tasks", None) or getattr(copy, "results", None) or [copy]:
        holder.model_spec.name = name
    return copy


# -- the data plane: read_model_spec, rewrite_model_name ------------------------------------------------------------


@pytest.mark.parametrize(("version", "label"), [(7, None), (None, "canary"), (None, None)])
def test_predict_request_read_and_renamed(version: int | None, label: str | None) -> None:
    request = predict_request(version, label)
    raw = request.SerializeToString(deterministic=True)
    assert len(raw) > 4 << 20

    assert read_model_spec("PredictRequest", raw) == SpecInfo("resnet", version, label, "serving_default")

    out = rewrite_model_name("PredictRequest", raw, "tenant-a.resnet")
    parsed = predict_pb2.PredictRequest.FromString(out)
    expected = renamed(request, "tenant-a.resnet")
    assert parsed == expected
    assert parsed.model_spec.WhichOneof("version_choice") == request.model_spec.WhichOneof("version_choice")
    assert parsed.inputs["big"].tensor_content == request.inputs["big"].tensor_content
    # byte for byte: the tensors were not moved, only the model_spec record changed
    assert out == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("message_name", sorted(MESSAGES))
def test_every_message_renamed_byte_for_byte(message_name: str) -> None:
    message = MESSAGES[message_name]()
    raw = message.SerializeToString(deterministic=True)
    official_class = type(message)

    out = rewrite_model_name(message_name, raw, "other-model")
    expected = renamed(message, "other-model")
    assert official_class.FromString(out) == expected
    # model_spec stays where it was, even in responses (where it follows the outputs), so the bytes are the ones
    # the official serializer makes
    assert out == expected.SerializeToString(deterministic=True)

    info = read_model_spec(message_name, out)
    assert info.name == "other-model"
    assert rewrite_model_name(message_name, out, "other-model") is out  # nothing to change: no copy


@pytest.mark.parametrize(
    ("message_name", "expected"),
    [
        ("ClassificationRequest", SpecInfo("resnet", None, "stable", "serving_default")),
        ("RegressionRequest", SpecInfo("resnet", 3, None, "serving_default")),
        ("GetModelMetadataRequest", SpecInfo("resnet", None, None, "serving_default")),
        ("MultiInferenceRequest", SpecInfo("resnet", 4, None, "classify_x")),
        ("PredictResponse", SpecInfo("resnet", 7, None, "serving_default")),
    ],
)
def test_read_model_spec(message_name: str, expected: SpecInfo) -> None:
    raw = MESSAGES[message_name]().SerializeToString()
    assert read_model_spec(message_name, raw) == expected


def test_model_status_request_spec() -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m"
    request.model_spec.version_label = "stable"
    assert read_model_spec("GetModelStatusRequest", request.SerializeToString()) == SpecInfo("m", None, "stable", "")
    out = rewrite_model_name("GetModelStatusRequest", request.SerializeToString(), "n")
    assert get_model_status_pb2.GetModelStatusRequest.FromString(out) == renamed(request, "n")


def test_multi_inference_tasks_must_name_one_model() -> None:
    request = multi_inference_request()
    request.tasks[1].model_spec.name = "other"
    with pytest.raises(ValueError, match=r"same model.*\['other', 'resnet'\]"):
        read_model_spec("MultiInferenceRequest", request.SerializeToString())

    request = multi_inference_request()
    del request.tasks[:]
    with pytest.raises(ValueError, match="has no tasks"):
        read_model_spec("MultiInferenceRequest", request.SerializeToString())

    request = multi_inference_request()
    request.tasks[1].ClearField("model_spec")
    with pytest.raises(ValueError, match=r"tasks\[1\]\.model_spec is missing"):
        read_model_spec("MultiInferenceRequest", request.SerializeToString())


def test_missing_or_empty_model_spec_is_a_clear_error() -> None:
    request = predict_request()
    request.ClearField("model_spec")
    raw = request.SerializeToString()
    with pytest.raises(ValueError, match=r"PredictRequest\.model_spec is missing: set model_spec\.name"):
        read_model_spec("PredictRequest", raw)
    assert rewrite_model_name("PredictRequest", raw, "x") is raw  # nothing to rename

    request = predict_request()
    request.model_spec.name = ""
    with pytest.raises(ValueError, match=r"PredictRequest\.model_spec\.name is empty"):
        read_model_spec("PredictRequest", request.SerializeToString())

    with pytest.raises(ValueError, match="new model name is empty"):
        rewrite_model_name("PredictRequest", request.SerializeToString(), "")
    with pytest.raises(KeyError, match="not a TF Serving message with a model_spec"):
        read_model_spec("Predict", b"")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        *MALFORMED,  # not a protobuf message at all: the reason is adapters.protowire's
        (b"\x0a\x02\x0a\xff", "model_spec"),  # model_spec that is not a ModelSpec
        (b"\x0a\x03\x0a\x01\xff", "model_spec"),  # name that is not UTF-8
    ],
)
def test_undecodable_bytes_are_a_value_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=f"PredictRequest.*{reason}"):
        read_model_spec("PredictRequest", raw)
    with pytest.raises(ValueError, match="PredictRequest"):
        rewrite_model_name("PredictRequest", raw, "x")


def test_a_repeated_model_spec_merges_like_protobuf() -> None:
    first = predict_pb2.PredictRequest()
    first.model_spec.name = "a"
    first.model_spec.signature_name = "sig"
    first.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    second = predict_pb2.PredictRequest()
    second.model_spec.version.value = 5
    raw = first.SerializeToString() + second.SerializeToString()  # concatenation = merge
    merged = predict_pb2.PredictRequest.FromString(raw)
    assert read_model_spec("PredictRequest", raw) == SpecInfo("a", 5, None, "sig")
    out = rewrite_model_name("PredictRequest", raw, "b")
    assert predict_pb2.PredictRequest.FromString(out) == renamed(merged, "b")
    assert [field for field, *_ in records(out)] == [1, 2]  # one model_spec, where the first was


def test_unknown_group_fields_are_skipped_and_kept() -> None:
    request = predict_request(version=1)
    raw = b"\x9b\x06\x08\x01\x0b\x10\x02\x0c\x9c\x06" + request.SerializeToString()  # group 99 { 1: 1, group 1 {2: 2} }
    assert read_model_spec("PredictRequest", raw).version == 1
    out = rewrite_model_name("PredictRequest", raw, "z")
    assert out.startswith(raw[:10])  # the group, untouched
    assert predict_pb2.PredictRequest.FromString(out) == renamed(predict_pb2.PredictRequest.FromString(raw), "z")


def test_wire_walk_agrees_with_protobuf_on_damaged_bytes() -> None:
    """read_model_spec and rewrite_model_name accept exactly what protobuf's parser accepts (with our outer view of
    the message), and read the same ModelSpec: checked on truncated and bit-flipped messages."""
    view = _message_class("PredictRequest")
    request = predict_pb2.PredictRequest()
    with_spec(request, version=9)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.arange(6, dtype=np.int32)))
    request.output_filter.append("y")
    outcomes = {"ok": 0, "rejected": 0}
    for candidate in damaged(request.SerializeToString(), 400):
        try:
            parsed = view.FromString(candidate)
        except Exception:
            with pytest.raises(ValueError):
                read_model_spec("PredictRequest", candidate)
            with pytest.raises(ValueError):
                rewrite_model_name("PredictRequest", candidate, "renamed")
            outcomes["rejected"] += 1
            continue
        out = rewrite_model_name("PredictRequest", candidate, "renamed")
        if parsed.HasField("model_spec"):
            parsed.model_spec.name = "renamed"
            assert view.FromString(out) == parsed, candidate
        else:
            assert out is candidate
        spec = view.FromString(candidate).model_spec
        if spec.name:
            info = read_model_spec("PredictRequest", candidate)
            assert info.name == spec.name and info.signature_name == spec.signature_name
            assert info.version == (spec.version.value if spec.HasField("version") else None)
        else:
            with pytest.raises(ValueError):
                read_model_spec("PredictRequest", candidate)
        outcomes["ok"] += 1
    assert outcomes["ok"] > 50 and outcomes["rejected"] > 50, outcomes


# -- unknown fields through our protobuf views ----------------------------------------------------------------------


@pytest.mark.parametrize("message_name", sorted(MESSAGES))
def test_our_views_keep_unknown_fields(message_name: str) -> None:
    """Parsed with our partial views and serialized again, official messages come back equal; requests (model_spec
    first on the wire) come back byte for byte. Responses put model_spec after their results, and a protobuf
    serializer writes declared fields before unknown ones: equal, but reordered."""
    message = MESSAGES[message_name]()
    raw = message.SerializeToString(deterministic=True)
    ours = _message_class(message_name).FromString(raw)
    again = ours.SerializeToString()
    assert type(message).FromString(again) == message
    if message_name.endswith("Request"):
        assert again == raw


def test_fully_declared_messages_round_trip_byte_for_byte() -> None:
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=1, state=30)
    response.model_version_status.add(version=2, state=50).status.error_message = "gone"
    raw = response.SerializeToString()
    assert _message_class("GetModelStatusResponse").FromString(raw).SerializeToString() == raw


# -- model control: reload config, model status ---------------------------------------------------------------------


def test_reload_config_request_is_read_by_tf_serving() -> None:
    models = [
        ModelEntry("resnet", "/models/resnet"),
        ModelEntry("bert", "s3://bucket/bert", versions=(3, 1)),
        ModelEntry("lite", "/models/lite", model_platform="tflite", versions=[5]),  # type: ignore[arg-type]
    ]
    request = model_management_pb2.ReloadConfigRequest.FromString(reload_config_request(models))
    assert request.config.WhichOneof("config") == "model_config_list"
    configs = request.config.model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in configs] == [
        ("resnet", "/models/resnet", "tensorflow"),
        ("bert", "s3://bucket/bert", "tensorflow"),
        ("lite", "/models/lite", "tflite"),
    ]
    assert not configs[0].HasField("model_version_policy")  # TF Serving's default: the latest version
    assert configs[1].model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(configs[1].model_version_policy.specific.versions) == [3, 1]
    assert list(configs[2].model_version_policy.specific.versions) == [5]
    assert models[2].versions == (5,)


def test_an_empty_reload_config_still_names_the_list() -> None:
    """An empty list unloads everything; an unset config would be ignored by TF Serving."""
    request = model_management_pb2.ReloadConfigRequest.FromString(reload_config_request([]))
    assert request.config.WhichOneof("config") == "model_config_list"
    assert len(request.config.model_config_list.config) == 0


def test_reload_config_rejects_what_tf_serving_would() -> None:
    with pytest.raises(ValueError, match=r"lists a model twice: \['a'\]"):
        reload_config_request([ModelEntry("a", "/x"), ModelEntry("a", "/y")])
    with pytest.raises(ValueError, match="needs a base_path"):
        ModelEntry("a", "")
    with pytest.raises(ValueError, match="needs a name"):
        ModelEntry("", "/x")
    with pytest.raises(ValueError, match="non-negative"):
        ModelEntry("a", "/x", versions=(-1,))


def test_reload_config_status() -> None:
    response = model_management_pb2.ReloadConfigResponse()
    response.status.error_code = error_codes_pb2.INVALID_ARGUMENT
    response.status.error_message = "Illegal to list model resnet multiple times"
    response.metric.add(name="load_count", int64_value_increase=2)  # undeclared in ours: skipped
    assert reload_config_status(response.SerializeToString()) == (3, "Illegal to list model resnet multiple times")
    assert reload_config_status(model_management_pb2.ReloadConfigResponse().SerializeToString()) == (0, "")
    ok = model_management_pb2.ReloadConfigResponse()
    ok.status.error_code = error_codes_pb2.OK
    assert reload_config_status(ok.SerializeToString()) == (0, "")
    with pytest.raises(ValueError, match="ReloadConfigResponse: not a valid protobuf message"):
        reload_config_status(b"\x0a\x05ab")


def test_model_status_response_from_tf_serving() -> None:
    state = get_model_status_pb2.ModelVersionStatus
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=3, state=state.AVAILABLE)
    response.model_version_status.add(version=4, state=state.LOADING)
    failed = response.model_version_status.add(version=2, state=state.END)
    failed.status.error_code = error_codes_pb2.NOT_FOUND
    failed.status.error_message = "Could not find SavedModel .pb or .pbtxt at supplied export directory path"
    response.model_version_status.add(version=1, state=state.UNLOADING)
    response.model_version_status.add(version=5, state=state.START)
    response.model_version_status.add(version=6, state=state.UNKNOWN)
    response.model_version_status.add(version=7, state=35)  # a state this copy does not know
    assert model_status_response(response.SerializeToString()) == [
        VersionStatus(3, "AVAILABLE"),
        VersionStatus(4, "LOADING"),
        VersionStatus(2, "END", 5, "Could not find SavedModel .pb or .pbtxt at supplied export directory path"),
        VersionStatus(1, "UNLOADING"),
        VersionStatus(5, "START"),
        VersionStatus(6, "UNKNOWN"),
        VersionStatus(7, "UNKNOWN"),
    ]
    assert model_status_response(b"") == []
    with pytest.raises(ValueError, match="GetModelStatusResponse"):
        model_status_response(b"\x0a\x09")


def test_model_status_response_bytes_are_read_by_tf_serving() -> None:
    statuses = [VersionStatus(1, "AVAILABLE"), VersionStatus(2, "END", 3, "bad model")]
    parsed = get_model_status_pb2.GetModelStatusResponse.FromString(model_status_response_bytes(statuses))
    state = get_model_status_pb2.ModelVersionStatus
    assert [(s.version, s.state, s.status.error_code, s.status.error_message) for s in parsed.model_version_status] == [
        (1, state.AVAILABLE, 0, ""),
        (2, state.END, 3, "bad model"),
    ]
    assert not parsed.model_version_status[0].HasField("status")
    assert model_status_response(model_status_response_bytes(statuses)) == statuses
    with pytest.raises(ValueError, match="unknown model version state 'READY'"):
        model_status_response_bytes([VersionStatus(1, "READY")])  # type: ignore[arg-type]


def test_model_status_request_is_read_by_tf_serving() -> None:
    parsed = get_model_status_pb2.GetModelStatusRequest.FromString(model_status_request("resnet", 12))
    assert parsed.model_spec.name == "resnet"
    assert parsed.model_spec.WhichOneof("version_choice") == "version"
    assert parsed.model_spec.version.value == 12
    parsed = get_model_status_pb2.GetModelStatusRequest.FromString(model_status_request("resnet"))
    assert parsed.model_spec.name == "resnet" and not parsed.model_spec.HasField("version")
    parsed = get_model_status_pb2.GetModelStatusRequest.FromString(model_status_request("resnet", 0))
    assert parsed.model_spec.HasField("version") and parsed.model_spec.version.value == 0
    with pytest.raises(ValueError):
        model_status_request("")


# -- packaging ------------------------------------------------------------------------------------------------------


def test_importing_our_messages_imports_no_tensorflow() -> None:
    """In a fresh process: no TensorFlow, no TF Serving, no protoc; and the official modules imported afterwards
    (into the default pool) clash with nothing and read our bytes."""
    script = """
import sys
import adapters.tfserving_proto.messages as ours
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "tensorflow_serving", "grpc_tools"})
assert not heavy, heavy
raw = ours.model_status_request("m", 2)
from tensorflow_serving.apis import get_model_status_pb2
assert get_model_status_pb2.GetModelStatusRequest.FromString(raw).model_spec.version.value == 2
assert ours.read_model_spec("GetModelStatusRequest", raw).version == 2
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (protoc) is not installed")
def test_committed_descriptor_set_is_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "descriptors.binpb"
    build.compile_descriptor_set(fresh)
    assert build.same_descriptors(build.ARTIFACT.read_bytes(), fresh.read_bytes()), (
        "adapters/tfserving_proto/descriptors.binpb is stale: run python -m adapters.tfserving_proto.build"
    )
