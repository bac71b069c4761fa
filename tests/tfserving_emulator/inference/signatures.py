"""Signatures: the method names and default key, and running one signature of a loaded model on numpy arrays."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tests.tfserving_emulator.inference.tensors import Array, array_dtype_enum, dtype_string
from tests.tfserving_emulator.servables.loader import LoadedModel
from tests.tfserving_emulator.status import INTERNAL, INVALID_ARGUMENT, TFError

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


def _tf_error(e: Exception) -> TFError:
    if isinstance(e, tf.errors.OpError):
        return TFError(int(e.error_code), e.message)
    return TFError(INVALID_ARGUMENT, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def run_signature(model: LoadedModel, signature_name: str, feeds: dict[str, Array]) -> dict[str, Array]:
    signature = model.signature_defs[signature_name]
    for index, (alias, array) in enumerate(feeds.items()):
        expected = signature.inputs[alias].dtype
        got = array_dtype_enum(array)
        if expected != got:
            raise TFError(
                INVALID_ARGUMENT,
                f"Expects arg[{index}] to be {dtype_string(expected)} but {dtype_string(got)} is provided",
            )
    fn = getattr(model.tf_model, "signatures", {}).get(signature_name)
    if fn is None:
        raise TFError(INTERNAL, f"Signature {signature_name} of the SavedModel is not callable")
    try:
        tensors = {
            alias: tf.constant(array, dtype=tf.as_dtype(signature.inputs[alias].dtype))
            for alias, array in feeds.items()
        }
        outputs = fn(**tensors)
    except Exception as e:
        raise _tf_error(e) from None
    return {alias: np.asarray(value.numpy()) for alias, value in outputs.items()}
