"""Writing tensors as REST responses (json_tensor.cc): "predictions" (row) or "outputs" (columnar), `_bytes`
outputs as base64."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from tests.tfserving_emulator.inference.tensors import Array
from tests.tfserving_emulator.rest.json_writer import RawNumber, dumps, format_decimal
from tests.tfserving_emulator.status import INVALID_ARGUMENT, TFError


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
