"""A local stack of real parts: Triton from the nvidia-pytriton wheel, and test models for it.

`find_triton()` locates the wheel's server and prepares a backend directory for the running Python;
`TritonServer` runs one server process on 127.0.0.1; `write_model_repository()` writes Python-backend models
whose answers show which model produced them. See TRITON_FACTS.md for the server's behaviour as verified here.
"""

from deploy.localstack.models import demo_model_names, model_offset, write_model, write_model_repository
from deploy.localstack.triton import (
    TritonDist,
    TritonError,
    TritonNotFoundError,
    TritonServer,
    TritonStartError,
    find_triton,
    free_port,
)

__all__ = [
    "TritonDist",
    "TritonError",
    "TritonNotFoundError",
    "TritonServer",
    "TritonStartError",
    "demo_model_names",
    "find_triton",
    "free_port",
    "model_offset",
    "write_model",
    "write_model_repository",
]
