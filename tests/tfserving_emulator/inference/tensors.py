"""Tensors: TF Serving's dtype names and numpy arrays to TensorProto (Tensor::AsProtoField)."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

Array = npt.NDArray[Any]


DTYPE_STRINGS = {
    types_pb2.DT_FLOAT: "float",
    types_pb2.DT_DOUBLE: "double",
    types_pb2.DT_INT32: "int32",
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_INT16: "int16",
    types_pb2.DT_INT8: "int8",
    types_pb2.DT_STRING: "string",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_BOOL: "bool",
    types_pb2.DT_UINT16: "uint16",
    types_pb2.DT_HALF: "half",
    types_pb2.DT_UINT32: "uint32",
    types_pb2.DT_UINT64: "uint64",
    types_pb2.DT_BFLOAT16: "bfloat16",
}


def dtype_string(dtype: int) -> str:
    return str(DTYPE_STRINGS.get(dtype, types_pb2.DataType.Name(dtype)[3:].lower()))


def array_dtype_enum(array: Array) -> int:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return int(types_pb2.DT_STRING)
    return int(tf.as_dtype(array.dtype).as_datatype_enum)


def ndarray_to_tensor_proto(array: Array) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField: values in the typed repeated fields, not tensor_content."""
    proto = tensor_pb2.TensorProto()
    dtype = array_dtype_enum(array)
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add().size = int(size)
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
    elif dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend(flat.tolist())
    elif dtype == types_pb2.DT_DOUBLE:
        proto.double_val.extend(flat.tolist())
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        proto.int_val.extend(int(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_INT64:
        proto.int64_val.extend(int(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_BOOL:
        proto.bool_val.extend(bool(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_UINT32:
        proto.uint32_val.extend(int(v) for v in flat.tolist())
    elif dtype == types_pb2.DT_UINT64:
        proto.uint64_val.extend(int(v) for v in flat.tolist())
    else:
        proto.CopyFrom(tf.make_tensor_proto(array))
    return proto
