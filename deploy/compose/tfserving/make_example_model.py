"""Write the compose stack's example TF Serving model, `add1-tf`: a SavedModel whose `serving_default` takes
`x` (DT_FLOAT, shape [-1]) and returns `y = x + 1`.

A SavedModel is binary, so it is generated here rather than committed. docker-compose's `tfs-example-model`
job runs this once in the `tensorflow/tensorflow` image, into the `tfs-models` volume that TF Serving mounts
at /models; a backend registered with `model_base_path: /models` then serves it from /models/add1-tf/1/.

    python make_example_model.py /models      # writes /models/add1-tf/1/ unless it is already there
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

MODEL_NAME = "add1-tf"
VERSION = 1


def write_model(root: Path) -> Path:
    """Write `root/add1-tf/1/` (atomically: TF Serving never sees half a version folder); returns it."""
    import tensorflow as tf  # type: ignore[import-untyped]  # only in the job's image, not the gateway's

    target = root / MODEL_NAME / str(VERSION)
    if (target / "saved_model.pb").exists():
        return target
    staging = root / MODEL_NAME / f".{VERSION}.tmp"
    shutil.rmtree(staging, ignore_errors=True)

    def add1(x: Any) -> dict[str, Any]:
        return {"y": x + 1.0}

    module = tf.Module()
    module.serve = tf.function(add1, input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    os.replace(staging, target)
    return target


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path("/models")
    print(f"example TF Serving model at {write_model(root)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
