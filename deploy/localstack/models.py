"""Test models for the local Triton: tiny Python-backend models whose answers show which model produced them.

Model `names[i]` takes `INPUT0` (FP32, dims [-1]) and returns `OUTPUT0 = INPUT0 + i` and `MODEL_NAME` (BYTES,
shape [1], the model's name), so a response routed to the wrong model is visible at once.
A model can also stall: with `stall_ms` and `stall_fraction`, each instance counts the requests it executes and
sleeps `stall_ms` before answering request n when a hash of (`stall_seed`, server, instance, n) falls in the first
`stall_fraction` of its range: a fixed, reproducible share of slow calls (the tail that hedging is for).
With `load_log`, each model appends `"<name> <pid> <time>\\n"` to that file in `initialize` and
`"<name> unload <pid> <time>\\n"` to `<load_log>.unload` in `finalize`, so tests can count the real loads
and unloads on the server.
"""

from __future__ import annotations

import py_compile
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Stall",
    "demo_model_names",
    "model_offset",
    "write_decoupled_model",
    "write_model",
    "write_model_repository",
    "write_sequence_model",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
"""

_MODEL_PY = """\
# Written by deploy.localstack.models: a test model that shows which model answered.
import hashlib
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

NAME = {name!r}
OFFSET = np.float32({offset!r})
LOAD_LOG = {load_log!r}
INITIALIZE_DELAY_S = {initialize_delay_s!r}
EXECUTE_DELAY_S = {execute_delay_s!r}
FAIL_INITIALIZE = {fail_initialize!r}
STALL_S = {stall_s!r}
STALL_FRACTION = {stall_fraction!r}
STALL_SEED = {stall_seed!r}
FAIL_FRACTION = {fail_fraction!r}


def _log(path, line):
    with open(path, "a") as f:
        f.write(line)


# Which server this stub runs in (set by the local stack): two servers with the same models would otherwise
# stall on the same call numbers, and with traffic split evenly a hedge would meet a stall just as often.
SERVER = os.environ.get("MODELYARD_LOCALSTACK_SERVER", "")


def _stalls(instance, n):
    digest = hashlib.blake2b(f"{{STALL_SEED}}:{{SERVER}}:{{instance}}:{{n}}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < STALL_FRACTION * 2.0**64


def _fails(instance, n):
    digest = hashlib.blake2b(f"fail:{{SERVER}}:{{instance}}:{{n}}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < FAIL_FRACTION * 2.0**64


class TritonPythonModel:
    def initialize(self, args):
        self.instance = args.get("model_instance_name", "")
        self.executed = 0
        if INITIALIZE_DELAY_S:
            time.sleep(INITIALIZE_DELAY_S)
        if LOAD_LOG:
            _log(LOAD_LOG, f"{{NAME}} {{os.getpid()}} {{time.time()}}\\n")
        if FAIL_INITIALIZE:
            raise RuntimeError(f"model {{NAME}} fails to initialize on purpose")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if EXECUTE_DELAY_S:
                time.sleep(EXECUTE_DELAY_S)
            self.executed += 1
            if STALL_S and _stalls(self.instance, self.executed):
                time.sleep(STALL_S)
            if FAIL_FRACTION and _fails(self.instance, self.executed):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{{NAME}} fails on purpose")))
                continue
            out = pb_utils.Tensor("OUTPUT0", (x + OFFSET).astype(np.float32))
            name = pb_utils.Tensor("MODEL_NAME", np.array([NAME.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out, name]))
        return responses

    def finalize(self):
        if LOAD_LOG:
            _log(LOAD_LOG + ".unload", f"{{NAME}} unload {{os.getpid()}} {{time.time()}}\\n")
"""


@dataclass(frozen=True, slots=True)
class Stall:
    """A model that stalls `ms` milliseconds on `fraction` of its calls (decided by `seed`), with `instances`
    model instances so that one stalled call doesn't hold up the others."""

    ms: float
    fraction: float
    seed: int = 0
    instances: int = 2


def demo_model_names(count: int, prefix: str = "m") -> list[str]:
    """`count` model names: `m000`, `m001`, ... (more digits when `count` needs them)."""
    width = max(3, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def model_offset(names: Sequence[str], name: str) -> float:
    """What model `name` of a repository written from `names` adds to its input (its index in `names`)."""
    return float(list(names).index(name))


def write_model(
    root: Path,
    name: str,
    offset: float,
    *,
    load_log: Path | None = None,
    initialize_delay_s: float = 0.0,
    execute_delay_s: float = 0.0,
    fail_initialize: bool = False,
    stall: Stall | None = None,
    fail_fraction: float = 0.0,
) -> Path:
    """Write one test model, version 1, at `root/name`; returns its directory.

    `model.py` is byte-compiled here: otherwise the stub writes `1/__pycache__/` during the first load, Triton
    sees the model's files as changed, and the next load request reloads the model instead of being a no-op.

    `initialize_delay_s` makes loads slow, `execute_delay_s` makes every request slow, and `fail_initialize`
    makes every load fail (after the load-log line is written). `stall` makes a share of the calls slow, and
    `fail_fraction` a share of them fail (an error answer; which calls is reproducible).
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"model name {name!r} does not match {_NAME_RE.pattern}")
    model_dir = Path(root) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(_CONFIG.format(name=name, instances=stall.instances if stall else 1))
    (model_dir / "1" / "model.py").write_text(
        _MODEL_PY.format(
            name=name,
            offset=float(offset),
            load_log=str(load_log) if load_log is not None else None,
            initialize_delay_s=float(initialize_delay_s),
            execute_delay_s=float(execute_delay_s),
            fail_initialize=bool(fail_initialize),
            stall_s=stall.ms / 1000 if stall else 0.0,
            stall_fraction=stall.fraction if stall else 0.0,
            stall_seed=stall.seed if stall else 0,
            fail_fraction=float(fail_fraction),
        )
    )
    py_compile.compile(
        str(model_dir / "1" / "model.py"),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )
    return model_dir


def write_model_repository(
    root: Path,
    names: Sequence[str],
    *,
    load_log: Path | None = None,
    initialize_delay_s: Mapping[str, float] | None = None,
    execute_delay_s: Mapping[str, float] | None = None,
    failing: Collection[str] = (),
    stalls: Mapping[str, Stall] | None = None,
    fail_fractions: Mapping[str, float] | None = None,
) -> None:
    """Write one Python-backend test model per name under `root`; model `names[i]` adds `i` to its input.

    The per-model options of `write_model` can be given by name: `initialize_delay_s`, `execute_delay_s`,
    `failing` (models whose `initialize` raises), `stalls` and `fail_fractions`.
    """
    if len(set(names)) != len(names):
        raise ValueError("model names must be distinct")
    Path(root).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_model(
            root,
            name,
            float(i),
            load_log=load_log,
            initialize_delay_s=(initialize_delay_s or {}).get(name, 0.0),
            execute_delay_s=(execute_delay_s or {}).get(name, 0.0),
            fail_initialize=name in failing,
            stall=(stalls or {}).get(name),
            fail_fraction=(fail_fractions or {}).get(name, 0.0),
        )


# -- Models for protocol tests: a decoupled (streaming) model and a stateful (sequence batching) one ---------------
_DECOUPLED_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
"""

_DECOUPLED_PY = """\
# Written by deploy.localstack.models: a decoupled model that answers INPUT0 = n with n responses 0 .. n-1.
# Response i > 0 is sent only once the file GATE_DIR/<request id>.<i> exists (or after 30 s, answering -1):
# a test that creates it only after receiving response i-1 proves that nothing between holds responses back.
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

GATE_DIR = {gate_dir!r}


def _gate(request_id, i):
    path = os.path.join(GATE_DIR, f"{{request_id}}.{{i}}")
    deadline = time.monotonic() + 30.0
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().reshape(-1)[0])
            for i in range(n):
                value = float(i) if i == 0 or _gate(request.request_id(), i) else -1.0
                out = pb_utils.Tensor("OUTPUT0", np.array([value], dtype=np.float32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

_SEQUENCE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
sequence_batching {{
  max_sequence_idle_microseconds: 120000000
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "SERVER" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

_SEQUENCE_PY = """\
# Written by deploy.localstack.models: a stateful model; OUTPUT0 is the running sum of INPUT0 over the sequence
# (reset by its start) and SERVER the Triton that holds the state, so a step sent to another copy shows.
import os

import numpy as np
import triton_python_backend_utils as pb_utils

SERVER = os.environ.get("MODELYARD_LOCALSTACK_SERVER", "")


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            x = float(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().reshape(-1)[0])
            start = float(pb_utils.get_input_tensor_by_name(request, "START").as_numpy().reshape(-1)[0])
            corrid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().reshape(-1)[0])
            total = (0.0 if start else self.sums.get(corrid, 0.0)) + x
            self.sums[corrid] = total
            out = pb_utils.Tensor("OUTPUT0", np.array([total], dtype=np.float32))
            server = pb_utils.Tensor("SERVER", np.array([SERVER.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out, server]))
        return responses
"""


def _write_python_model(root: Path, name: str, config: str, model_py: str) -> Path:
    if not _NAME_RE.match(name):
        raise ValueError(f"model name {name!r} does not match {_NAME_RE.pattern}")
    model_dir = Path(root) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / "1" / "model.py").write_text(model_py)
    py_compile.compile(
        str(model_dir / "1" / "model.py"),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )
    return model_dir


def write_decoupled_model(root: Path, name: str, gate_dir: Path) -> Path:
    """A decoupled model: INPUT0 = n (FP32 [1]) answers n responses OUTPUT0 = 0, 1, ... n-1, then the final
    flag; response i > 0 waits for the file `gate_dir/<request id>.<i>` (30 s at most, then answers -1)."""
    return _write_python_model(
        root, name, _DECOUPLED_CONFIG.format(name=name), _DECOUPLED_PY.format(gate_dir=str(gate_dir))
    )


def write_sequence_model(root: Path, name: str) -> Path:
    """A stateful model (sequence batching, one instance): OUTPUT0 = running sum of INPUT0 (FP32 [1]) over the
    sequence, SERVER = the Triton that answered (`MODELYARD_LOCALSTACK_SERVER`)."""
    return _write_python_model(root, name, _SEQUENCE_CONFIG.format(name=name), _SEQUENCE_PY)
