"""Predict (predict_util.cc): the request checks and messages of TensorflowPredictor::Predict."""

from __future__ import annotations

import tensorflow as tf
from tensorflow_serving.apis import (
    predict_pb2,
)

from tests.tfserving_emulator.inference.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    run_signature,
)
from tests.tfserving_emulator.inference.tensors import Array, ndarray_to_tensor_proto
from tests.tfserving_emulator.servables.server_core import ServerCore
from tests.tfserving_emulator.status import FAILED_PRECONDITION, INTERNAL, INVALID_ARGUMENT, TFError


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
    outputs = run_signature(model, signature_name, feeds)
    selected = {alias: outputs[alias] for alias in aliases}
    for alias, array in selected.items():
        response.outputs[alias].CopyFrom(ndarray_to_tensor_proto(array))
    return response, selected
