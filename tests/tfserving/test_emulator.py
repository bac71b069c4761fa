"""The TF Serving emulator, driven through the OFFICIAL tensorflow_serving stubs and plain HTTP, as the gateway will.

One emulator serves the whole module (TensorFlow's import makes a start cost seconds); every test reloads its own
model list, with model names no other test uses (TF Serving, and so the emulator, mishandles a model re-added
right after it was removed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.tfserving_models import (
    build_broken_model,
    build_models,
    build_versioned_model,
    model_config_text,
)
from tests.tfserving_stack import TFServingEmulator
from tests.waiting import eventually as wait_for

State = get_model_status_pb2.ModelVersionStatus


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFServingEmulator]:
    with TFServingEmulator(tmp_path_factory.mktemp("tfs-models")) as tfs:
        yield tfs


@pytest.fixture(scope="module")
def models_root(emulator: TFServingEmulator) -> Path:
    return emulator.model_root


@pytest.fixture(scope="module")
def channel(emulator: TFServingEmulator) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(emulator.grpc_url) as ch:
        yield ch


@pytest.fixture(scope="module")
def model_service(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def rest(emulator: TFServingEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.rest_url, timeout=30.0) as client:
        yield client


# --- helpers ----------------------------------------------------------------------------------------------------


def reload_request(config_text: str) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    return request


def reload(
    stub: model_service_pb2_grpc.ModelServiceStub, config_text: str, timeout: float = 60.0
) -> model_management_pb2.ReloadConfigResponse:
    response: model_management_pb2.ReloadConfigResponse = stub.HandleReloadConfigRequest(
        reload_request(config_text), timeout=timeout
    )
    return response


def status(
    stub: model_service_pb2_grpc.ModelServiceStub, name: str, version: int | None = None
) -> dict[int, tuple[str, int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    response = stub.GetModelStatus(request, timeout=10)
    return {
        v.version: (State.State.Name(v.state), v.status.error_code, v.status.error_message)
        for v in response.model_version_status
    }


def float_tensor(rows: list[list[float]]) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    tensor.tensor_shape.dim.add().size = len(rows)
    tensor.tensor_shape.dim.add().size = len(rows[0])
    tensor.float_val.extend(v for row in rows for v in row)
    return tensor


def predict(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    name: str,
    rows: list[list[float]],
    version: int | None = None,
    label: str | None = None,
) -> tuple[list[list[float]], list[str], predict_pb2.PredictResponse]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(float_tensor(rows))
    response: predict_pb2.PredictResponse = stub.Predict(request, timeout=30)
    y = list(response.outputs["y"].float_val)
    width = response.outputs["y"].tensor_shape.dim[1].size
    return (
        [y[i : i + width] for i in range(0, len(y), width)],
        [s.decode() for s in response.outputs["model"].string_val],
        response,
    )


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def example(x: list[float]) -> example_pb2.Example:
    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.extend(x)
    return ex


# --- reload, status, predict --------------------------------------------------------------------------------------


def test_reload_two_models_serves_both_from_the_right_model(
    emulator: TFServingEmulator, models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client
) -> None:
    models = build_models(models_root, ["two_a", "two_b"])  # offsets 1.0 and 2.0
    response = reload(model_service, model_config_text(models))
    assert response.status.error_code == 0 and response.status.error_message == ""
    # The reload returns once the new models are AVAILABLE.
    assert status(model_service, "two_a") == {1: ("AVAILABLE", 0, "")}
    assert status(model_service, "two_b") == {1: ("AVAILABLE", 0, "")}

    y, names, response = predict(prediction, "two_a", [[1, 2, 3, 4], [0, 0, 0, 0]])
    assert y == [[2, 3, 4, 5], [1, 1, 1, 1]] and names == ["two_a", "two_a"]
    assert (response.model_spec.name, response.model_spec.version.value) == ("two_a", 1)
    assert response.model_spec.signature_name == "serving_default"
    y, names, _ = predict(prediction, "two_b", [[1, 2, 3, 4]])
    assert y == [[3, 4, 5, 6]] and names == ["two_b"]

    # REST, row format: one object per instance (two named outputs), floats printed as TF Serving prints them.
    r = rest.post("/v1/models/two_b:predict", json={"instances": [[1, 2, 3, 4], [0.5, 0, 0, 0]]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "predictions": [{"model": "two_b", "y": [3.0, 4.0, 5.0, 6.0]}, {"model": "two_b", "y": [2.5, 2.0, 2.0, 2.0]}]
    }
    assert "3.0, 4.0" in r.text
    # Named row format and the columnar format.
    r = rest.post("/v1/models/two_a:predict", json={"instances": [{"x": [1, 2, 3, 4]}]})
    assert r.json() == {"predictions": [{"model": "two_a", "y": [2.0, 3.0, 4.0, 5.0]}]}
    r = rest.post(
        "/v1/models/two_a/versions/1:predict", json={"signature_name": "serving_default", "inputs": [[1, 1, 1, 1]]}
    )
    assert r.json() == {"outputs": {"model": ["two_a"], "y": [[2.0, 2.0, 2.0, 2.0]]}}
    r = rest.post("/v1/models/two_a:predict", json={"inputs": {"x": [[0, 0, 0, 0], [1, 1, 1, 1]]}})
    assert r.json() == {"outputs": {"model": ["two_a", "two_a"], "y": [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]}}

    r = rest.get("/v1/models/two_a")
    assert r.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert rest.get("/v1/models/two_a/versions/1").json()["model_version_status"][0]["state"] == "AVAILABLE"


def test_reload_replaces_the_list_dropped_model_ends_the_other_keeps_serving(
    emulator: TFServingEmulator, models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client
) -> None:
    models = build_models(models_root, ["drop_keep", "drop_gone"])
    reload(model_service, model_config_text(models))
    loads_of_kept = emulator.load_count("drop_keep")
    assert loads_of_kept == 1

    reload(model_service, model_config_text({"drop_keep": models["drop_keep"]}))
    # The reload does not wait for unloads: the dropped version goes UNLOADING then END (the monitor keeps it).
    wait_for(lambda: status(model_service, "drop_gone") == {1: ("END", 0, "")})
    error = rpc_error(lambda: predict(prediction, "drop_gone", [[1, 2, 3, 4]]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(drop_gone)"
    r = rest.post("/v1/models/drop_gone:predict", json={"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Latest(drop_gone)"}
    assert rest.get("/v1/models/drop_gone").json()["model_version_status"][0]["state"] == "END"

    # The kept model was left untouched: still answering, never loaded again.
    assert predict(prediction, "drop_keep", [[0, 0, 0, 0]])[1] == ["drop_keep"]
    assert emulator.load_count("drop_keep") == loads_of_kept
    reload(model_service, model_config_text({"drop_keep": models["drop_keep"]}))
    assert emulator.load_count("drop_keep") == loads_of_kept


def test_unknown_model_is_not_found_everywhere(model_service: Any, prediction: Any, rest: httpx.Client) -> None:
    error = rpc_error(lambda: status(model_service, "no_such_model"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Could not find any versions of model no_such_model"
    error = rpc_error(lambda: status(model_service, "no_such_model", version=3))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 3 of model no_such_model",
    )
    error = rpc_error(lambda: predict(prediction, "no_such_model", [[1, 2, 3, 4]]))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(no_such_model)",
    )
    error = rpc_error(lambda: predict(prediction, "no_such_model", [[1, 2, 3, 4]], version=7))
    assert error.details() == "Servable not found for request: Specific(no_such_model, 7)"

    r = rest.get("/v1/models/no_such_model")
    assert r.status_code == 404 and r.json() == {"error": "Could not find any versions of model no_such_model"}
    r = rest.post("/v1/models/no_such_model:predict", json={"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Latest(no_such_model)"}
    r = rest.get("/v1/models/no_such_model/metadata")
    assert r.status_code == 404


def test_broken_model_fails_the_reload_and_shows_in_status(
    emulator: TFServingEmulator, models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client
) -> None:
    good = build_models(models_root, ["brk_good"])["brk_good"]
    corrupt = build_broken_model(models_root, "brk_corrupt", kind="corrupt")
    empty = build_broken_model(models_root, "brk_empty", kind="empty_version")
    config = model_config_text({"brk_good": good, "brk_corrupt": corrupt, "brk_empty": empty})

    error = rpc_error(lambda: reload(model_service, config))
    # model_service_impl.cc returns the status as the gRPC status (grpc sends no response body with it).
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details() == (
        "2 model(s) did not become available: {"
        "{{name: brk_corrupt version: 1} due to error: DATA_LOSS: "
        f"Can't parse {corrupt}/1/saved_model.pb as binary proto}}, "
        "{{name: brk_empty version: 1} due to error: NOT_FOUND: Specified file path does not appear to contain a "
        "SavedModel bundle (should have a file called `saved_model.pb`)\n"
        f"Specified file path: {empty}/1}}, }}"
    )
    assert status(model_service, "brk_corrupt") == {
        1: ("END", 15, f"Can't parse {corrupt}/1/saved_model.pb as binary proto")
    }
    state, code, message = status(model_service, "brk_empty")[1]
    assert (state, code) == ("END", 5) and message.startswith("Specified file path does not appear")
    body = rest.get("/v1/models/brk_corrupt").json()
    assert body["model_version_status"][0]["status"]["error_code"] == "DATA_LOSS"
    # The good model of the same reload was loaded all the same.
    assert predict(prediction, "brk_good", [[0, 0, 0, 0]])[1] == ["brk_good"]

    # As in TF Serving, a failed model stays in the config: listing it again is no new model, so the reload
    # succeeds at once and nothing is retried.
    loads = emulator.load_count("brk_corrupt")
    assert reload(model_service, config).status.error_code == 0
    assert emulator.load_count("brk_corrupt") == loads


def test_load_log_counts_real_loads(emulator: TFServingEmulator, models_root: Path, model_service: Any) -> None:
    models = build_models(models_root, ["log_a", "log_b", "log_c"])
    before = len(emulator.load_log())
    reload(model_service, model_config_text({"log_a": models["log_a"], "log_b": models["log_b"]}))
    reload(model_service, model_config_text(models))  # log_a and log_b unchanged: only log_c loads
    assert emulator.load_log()[before:] == ["load log_a 1", "load log_b 1", "load log_c 1"]
    assert [emulator.load_count(n) for n in ("log_a", "log_b", "log_c")] == [1, 1, 1]


def test_versions_latest_specific_and_labels(
    models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client
) -> None:
    base = build_versioned_model(models_root, "ver_m", {1: 10.0, 2: 20.0})
    reload(model_service, model_config_text({"ver_m": base}))
    # TF Serving's default policy serves the latest version only.
    assert status(model_service, "ver_m") == {2: ("AVAILABLE", 0, "")}
    y, _, response = predict(prediction, "ver_m", [[0, 0, 0, 0]])
    assert y == [[20, 20, 20, 20]] and response.model_spec.version.value == 2
    error = rpc_error(lambda: predict(prediction, "ver_m", [[0, 0, 0, 0]], version=1))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(ver_m, 1)",
    )

    # A changed policy of a model already configured is not waited for: the reload returns, version 1 follows.
    reload(model_service, model_config_text({"ver_m": base}, versions={"ver_m": [1, 2]}))
    wait_for(lambda: status(model_service, "ver_m").get(1, ("",))[0] == "AVAILABLE")
    assert predict(prediction, "ver_m", [[0, 0, 0, 0]], version=1)[0] == [[10, 10, 10, 10]]
    assert predict(prediction, "ver_m", [[0, 0, 0, 0]], version=2)[0] == [[20, 20, 20, 20]]
    assert predict(prediction, "ver_m", [[0, 0, 0, 0]])[0] == [[20, 20, 20, 20]]
    assert status(model_service, "ver_m", version=1) == {1: ("AVAILABLE", 0, "")}
    r = rest.post("/v1/models/ver_m/versions/1:predict", json={"instances": [[0, 0, 0, 1]]})
    assert r.json()["predictions"][0]["y"] == [10.0, 10.0, 10.0, 11.0]

    # Labels may only name AVAILABLE versions; they work over gRPC and REST.
    labels = {"ver_m": {"stable": 1, "canary": 2}}
    reload(model_service, model_config_text({"ver_m": base}, versions={"ver_m": [1, 2]}, labels=labels))
    assert predict(prediction, "ver_m", [[0, 0, 0, 0]], label="stable")[0] == [[10, 10, 10, 10]]
    r = rest.post("/v1/models/ver_m/labels/canary:predict", json={"instances": [[0, 0, 0, 0]]})
    assert r.json()["predictions"][0]["y"] == [20.0, 20.0, 20.0, 20.0]
    error = rpc_error(lambda: predict(prediction, "ver_m", [[0, 0, 0, 0]], label="nope"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: nope",
    )
    error = rpc_error(
        lambda: reload(model_service, model_config_text({"ver_m": base}, labels={"ver_m": {"future": 3}}))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "Request to assign label to version 3 of model ver_m, which is not currently available for inference"
    )


def test_metadata(models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client) -> None:
    models = build_models(models_root, ["meta_m"])
    reload(model_service, model_config_text(models))
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "meta_m"
    request.metadata_field.append("signature_def")
    response = prediction.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("meta_m", 1)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 4]
    assert set(default.outputs) == {"y", "model"}
    assert signature_map.signature_def["tensorflow/serving/classify"].method_name == "tensorflow/serving/classify"

    request.ClearField("metadata_field")
    error = rpc_error(lambda: prediction.GetModelMetadata(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    body = rest.get("/v1/models/meta_m/metadata").json()
    assert body["model_spec"] == {"name": "meta_m", "signature_name": "", "version": "1"}
    rest_default = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert rest_default["method_name"] == "tensorflow/serving/predict"
    assert rest_default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert rest_default["inputs"]["x"]["tensor_shape"]["dim"][0]["size"] == "-1"
    assert rest.get("/v1/models/meta_m/versions/1/metadata").status_code == 200


def test_classify_and_regress(models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client) -> None:
    models = build_models(models_root, ["cr_m"], offsets={"cr_m": 0.5})
    reload(model_service, model_config_text(models))

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "cr_m"
    request.model_spec.signature_name = "tensorflow/serving/classify"
    request.input.example_list.examples.append(example([1, 2, 3, 4]))
    result = prediction.Classify(request, timeout=10).result
    assert [(c.label, c.score) for c in result.classifications[0].classes] == [
        ("cr_m:0", 1.5),
        ("cr_m:1", 2.5),
        ("cr_m:2", 3.5),
        ("cr_m:3", 4.5),
    ]
    request.model_spec.signature_name = ""  # serving_default is a predict signature
    error = rpc_error(lambda: prediction.Classify(request, timeout=10))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict",
    )

    regression = regression_pb2.RegressionRequest()
    regression.model_spec.name = "cr_m"
    regression.model_spec.signature_name = "tensorflow/serving/regress"
    context = regression.input.example_list_with_context
    context.context.features.feature["x"].float_list.value.extend([1, 1, 1, 1])  # overridden by each example
    context.examples.append(example([1, 2, 3, 4]))
    context.examples.append(example([0, 0, 0, 0]))
    assert [r.value for r in prediction.Regress(regression, timeout=10).result.regressions] == [10.5, 0.5]

    r = rest.post(
        "/v1/models/cr_m:regress",
        json={"signature_name": "tensorflow/serving/regress", "examples": [{"x": [1.0, 2.0, 3.0, 4.0]}]},
    )
    assert r.status_code == 200 and r.json() == {"results": [10.5]}
    r = rest.post(
        "/v1/models/cr_m:classify",
        json={"signature_name": "tensorflow/serving/classify", "examples": [{"x": [0.0, 0.0, 0.0, 1.0]}]},
    )
    assert r.json() == {"results": [[["cr_m:0", 0.5], ["cr_m:1", 0.5], ["cr_m:2", 0.5], ["cr_m:3", 1.5]]]}


def test_rest_and_grpc_request_errors(
    models_root: Path, model_service: Any, prediction: Any, rest: httpx.Client
) -> None:
    models = build_models(models_root, ["err_m"])
    reload(model_service, model_config_text(models))
    r = rest.post("/v1/models/err_m:predict", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "JSON Parse error: The document is empty"}
    r = rest.post("/v1/models/err_m:predict", json={"instances": [[1, 2, 3, 4], [1, 2]]})
    assert (r.status_code, r.json()) == (
        400,
        {
            "error": "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 4 but got: 2"
        },
    )
    r = rest.post("/v1/models/err_m:predict", json={"instances": [["a", 2, 3, 4]]})
    assert r.status_code == 400
    assert r.json()["error"].endswith('JSON Value: "a" Type: String is not of expected type: float')
    r = rest.post("/v1/models/err_m:predict", json={"rows": []})
    assert (r.status_code, r.json()) == (400, {"error": "Missing 'inputs' or 'instances' key"})
    r = rest.post("/v1/models/err_m:predict", json={"signature_name": "nope", "instances": [[1, 2, 3, 4]]})
    assert r.json() == {"error": 'Serving signature name: "nope" not found in signature def'}
    r = rest.get("/v1/models/err_m/versions/1/extra")
    assert (r.status_code, r.json()) == (400, {"error": "Malformed request: GET /v1/models/err_m/versions/1/extra"})
    assert rest.get("/healthz").status_code == 404

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "err_m"
    request.model_spec.signature_name = "nope"
    request.inputs["x"].CopyFrom(float_tensor([[1, 2, 3, 4]]))
    error = rpc_error(lambda: prediction.Predict(request, timeout=10))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )
    request.model_spec.signature_name = ""
    request.inputs["z"].CopyFrom(float_tensor([[1, 2, 3, 4]]))
    error = rpc_error(lambda: prediction.Predict(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("input size does not match signature: 2!=1 len({x,z}) != len({x}).")

    bad = model_management_pb2.ReloadConfigRequest()
    bad.config.custom_model_config.type_url = "example.com/whatever"
    error = rpc_error(lambda: model_service.HandleReloadConfigRequest(bad, timeout=10))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ServerModelConfig type not supported by HandleReloadConfigRequest. "
        "Only ModelConfigList is currently supported",
    )
    duplicate = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(model_config_text(models), duplicate)
    duplicate.model_config_list.config.append(duplicate.model_config_list.config[0])
    error = rpc_error(
        lambda: model_service.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=duplicate), timeout=10
        )
    )
    assert error.details() == "Illegal to list model err_m multiple times in config list"


def test_reloads_are_serialized_and_a_missing_base_path_blocks_until_it_appears(
    models_root: Path, model_service: Any, prediction: Any
) -> None:
    models = build_models(models_root, ["miss_keep"])
    missing = build_broken_model(models_root, "miss_later", kind="missing")
    reload(model_service, model_config_text(models))
    config = model_config_text({**models, "miss_later": missing})

    # TF Serving's file-system poll fails while a base path is missing, so the reload waits (here: past our
    # deadline) and holds the config lock: the next reload queues behind it.
    error = rpc_error(lambda: reload(model_service, config, timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    queued: list[Any] = []
    second = threading.Thread(target=lambda: queued.append(reload(model_service, config, timeout=60)))
    second.start()
    time.sleep(0.5)
    assert second.is_alive() and not queued
    assert predict(prediction, "miss_keep", [[0, 0, 0, 0]])[1] == ["miss_keep"]  # serving goes on meanwhile

    build_models(models_root, ["miss_later"])  # the path appears: the blocked reload ends, then the queued one
    second.join(60)
    assert queued and queued[0].status.error_code == 0
    assert predict(prediction, "miss_later", [[0, 0, 0, 0]])[1] == ["miss_later"]


# --- a second emulator: initial config, capacity, SIGTERM ---------------------------------------------------------


def test_initial_config_max_models_and_sigterm(tmp_path: Path) -> None:
    models = build_models(tmp_path, ["cap_a", "cap_b", "cap_c"])
    tfs = TFServingEmulator(
        tmp_path,
        initial_config=model_config_text({"cap_a": models["cap_a"]}),
        max_models=2,
        load_delay=0.2,
    )
    tfs.start()
    try:
        # The initial config is loaded before the ports open, like TF Serving.
        assert tfs.load_log() == ["load cap_a 1"]
        with grpc.insecure_channel(tfs.grpc_url) as ch:
            ms = model_service_pb2_grpc.ModelServiceStub(ch)
            assert status(ms, "cap_a") == {1: ("AVAILABLE", 0, "")}
            error = rpc_error(lambda: reload(ms, model_config_text(models)))
            assert error.code() == grpc.StatusCode.UNKNOWN
            assert "due to error: RESOURCE_EXHAUSTED: Insufficient resources to load servable {name: cap_" in (
                error.details()
            )
            states = {n: status(ms, n)[1][0] for n in ("cap_a", "cap_b", "cap_c")}
            assert sorted(states.values()) == ["AVAILABLE", "AVAILABLE", "END"]
    finally:
        code = tfs.stop()
    assert code == 0
    assert tfs.startup_seconds is not None
