"""Classify and Regress over tf.Example inputs (classifier.cc, regressor.cc): signature, method-name and
output-shape checks."""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    regression_pb2,
)

from tests.tfserving_emulator.inference.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    run_signature,
)
from tests.tfserving_emulator.inference.tensors import Array, array_dtype_enum
from tests.tfserving_emulator.servables.loader import LoadedModel
from tests.tfserving_emulator.servables.server_core import ServerCore
from tests.tfserving_emulator.status import FAILED_PRECONDITION, INVALID_ARGUMENT, TFError


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


def _model_and_signature(core: ServerCore, request: Any, method: str, what: str) -> tuple[LoadedModel, str, Any]:
    """The servable and the signature (key, SignatureDef) a Classify/Regress request names, checked in
    classifier.cc's order."""
    if not request.HasField("model_spec"):
        raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
    model = core.get_servable(request.model_spec)
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if name not in model.signature_defs:
        raise TFError(INVALID_ARGUMENT, f"No signature was found with the name: {name}")
    signature = model.signature_defs[name]
    if signature.method_name != method:
        raise TFError(
            INVALID_ARGUMENT, f"Expected {what} signature method_name to be {method}. Was: {signature.method_name}"
        )
    return model, name, signature


def classify(
    core: ServerCore, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    model, name, signature = _model_and_signature(core, request, CLASSIFY_METHOD, "classification")
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
    outputs = run_signature(model, name, {"inputs": examples})
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
        got = array_dtype_enum(tensor)
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
    model, name, signature = _model_and_signature(core, request, REGRESS_METHOD, "regression")
    if len(signature.inputs) != 1:
        raise TFError(INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise TFError(INVALID_ARGUMENT, "Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise TFError(FAILED_PRECONDITION, f"No regression inputs found in SignatureDef: {signature}")
    if "outputs" not in signature.outputs:
        raise TFError(FAILED_PRECONDITION, f"No regression outputs found in SignatureDef: {signature}")
    examples = _serialized_examples(request.input)
    output = run_signature(model, name, {"inputs": examples})["outputs"]
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
        got = types_pb2.DataType.Name(array_dtype_enum(output))
        raise TFError(INVALID_ARGUMENT, f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    response = regression_pb2.RegressionResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = model.version
    for value in output.ravel().tolist():
        response.result.regressions.add().value = value
    return response
