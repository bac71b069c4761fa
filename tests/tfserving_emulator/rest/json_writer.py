"""Writing JSON as TF Serving does (json_tensor.cc, rapidjson's PrettyWriter): number formatting, type names,
indentation."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


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
