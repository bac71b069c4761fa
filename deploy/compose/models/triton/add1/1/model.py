"""Example Triton Python-backend model `add1`: OUTPUT0 = INPUT0 + 1 (FP32, one dimension of any length).

docker-compose's `minio-init` copies this folder to s3://models/triton/add1/; the gateway reads it from there
and gives the files to Triton with the load call (Triton's own model repository stays empty).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Provided by Triton's Python backend inside the server; not installable from PyPI.
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = (x + np.float32(1.0)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", y)]))
        return responses
