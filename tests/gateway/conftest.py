"""Real parts for gateway tests: one Redis and two Triton servers for the session; gateways per test.

The fixtures (`stack`, `start_gateway`, `new_loads`) live in tests/conftest.py, so that tests/sources shares the
same session stack; the stack's models, the admin token and the answer checks are here.

Each test gets its own Redis key prefix (so its registry starts empty) and, on teardown, every Triton is
emptied and its gateways stopped, so tests don't see each other's models.
"""

from __future__ import annotations

from collections.abc import Callable

from deploy.localstack.models import Stall, demo_model_names
from deploy.localstack.stack import GatewayProcess

MODELS = [*demo_model_names(40), "broken", "slow", "stall", "flaky", "slower"]
# "stall" sleeps 1.5 s on a fifth of the calls each of its two instances executes (a reproducible share)
STALL = Stall(ms=1500, fraction=0.2, seed=5, instances=2)
TOKEN = "test-admin-token"

StartGateway = Callable[..., GatewayProcess]


def offset(name: str) -> float:
    return float(MODELS.index(name))


def infer_body(values: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [len(values)], "data": values}]}


def check_answer(name: str, values: list[float], data: dict[str, object]) -> None:
    """The answer came from model `name`: its output is the input plus that model's own offset."""
    outputs = {o["name"]: o for o in data["outputs"]}  # type: ignore[attr-defined]
    assert outputs["MODEL_NAME"]["data"] == [name], f"asked {name}, answered {outputs['MODEL_NAME']['data']}"
    assert outputs["OUTPUT0"]["data"] == [v + offset(name) for v in values]
