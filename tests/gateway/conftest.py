"""Real parts for gateway tests: one Redis and two Triton servers for the session; gateways per test.

Each test gets its own Redis key prefix (so its registry starts empty) and, on teardown, every Triton is
emptied and its gateways stopped, so tests don't see each other's models.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.localstack.models import Stall, demo_model_names
from deploy.localstack.stack import GatewayProcess, LocalStack

MODELS = [*demo_model_names(40), "broken", "slow", "stall"]
# "stall" sleeps 1.5 s on a fifth of the calls each of its two instances executes (a reproducible share)
STALL = Stall(ms=1500, fraction=0.2, seed=5, instances=2)
TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    with LocalStack(
        workdir,
        MODELS,
        tritons=2,
        failing=["broken"],
        execute_delay_s={"slow": 1.0},
        stalls={"stall": STALL},
        token=TOKEN,
    ) as s:
        yield s


StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def new_loads(stack: LocalStack) -> Callable[[], list[str]]:
    """Real loads Triton did since the test began (the load log is shared by the session)."""
    mark = len(stack.loads())
    return lambda: stack.loads()[mark:]


@pytest.fixture
def start_gateway(stack: LocalStack) -> Iterator[StartGateway]:
    """Start `modelyard serve` processes sharing the stack's Redis under one fresh key prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def start(*extra: str) -> GatewayProcess:
        return stack.add_gateway(prefix=prefix, extra=extra)

    yield start
    stack.stop_gateways()
    stack.unload_everything()


def offset(name: str) -> float:
    return float(MODELS.index(name))


def infer_body(values: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [len(values)], "data": values}]}


def check_answer(name: str, values: list[float], data: dict[str, object]) -> None:
    """The answer came from model `name`: its output is the input plus that model's own offset."""
    outputs = {o["name"]: o for o in data["outputs"]}  # type: ignore[attr-defined]
    assert outputs["MODEL_NAME"]["data"] == [name], f"asked {name}, answered {outputs['MODEL_NAME']['data']}"
    assert outputs["OUTPUT0"]["data"] == [v + offset(name) for v in values]
