"""Reading REST request bodies into tensors (json_tensor.cc): the row ("instances") and columnar ("inputs")
formats with their checks and messages, base64 values."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tests.tfserving_emulator.inference.tensors import Array, dtype_string
from tests.tfserving_emulator.rest.json_writer import json_type_string, json_value_to_string
from tests.tfserving_emulator.status import INVALID_ARGUMENT, UNIMPLEMENTED, TFError


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


def is_lossless(value: Any, digits: int, max_value: float) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if _is_int(value):
        return bool(abs(value) <= (1 << digits) - 1)
    return -max_value <= float(value) <= max_value


def is_base64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_base64(value: Any) -> bytes:
    if not is_base64_object(value):
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
        if not is_lossless(value, 24, float(np.finfo(np.float32).max)):
            raise TFError(
                INVALID_ARGUMENT,
                f"Cannot convert JSON value: {json_value_to_string(value)} to float without loss of precision.",
            )
        out.append(value)
    elif dtype == types_pb2.DT_DOUBLE:
        if not _is_number(value):
            raise _type_error(value, dtype)
        if not is_lossless(value, 53, float(np.finfo(np.float64).max)):
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
            out.append(decode_base64(value))
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


def signature_name_from_json(doc: dict[str, Any]) -> str:
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
        return isinstance(v, dict) and not is_base64_object(v)

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
    if not isinstance(value, dict) or is_base64_object(value):
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
