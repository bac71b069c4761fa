"""Reading the tf.Example inputs of REST classify/regress bodies (FillClassifyRegressRequestFromJson)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    input_pb2,
)

from tests.tfserving_emulator.rest.json_inputs import decode_base64, is_base64_object, is_lossless
from tests.tfserving_emulator.rest.json_writer import json_type_string, json_value_to_string
from tests.tfserving_emulator.status import INVALID_ARGUMENT, TFError


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

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_base64_object(value)):
        raise TFError(
            INVALID_ARGUMENT, f"Feature: {name} has element with unexpected JSON type: {json_type_string(value)}"
        )
    if isinstance(value, bool):
        check("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        check("bytes_list")
        feature.bytes_list.value.append(decode_base64(value))
    elif isinstance(value, str):
        check("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        check("float_list")
        if not is_lossless(value, 24, float(np.finfo(np.float32).max)):
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
