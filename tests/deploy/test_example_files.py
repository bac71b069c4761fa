"""The compose stack's own code and models, run for real where this machine can: no Docker needed.

- `deploy/compose/fleet.yaml` applied by `modelyard apply` to a real `modelyard serve` (embedded Redis).
- The example Triton model `add1` loaded into the local stack's real Triton (skipped without the nvidia-pytriton
  wheel).
- `deploy/compose/tfserving/make_example_model.py` run with the dev environment's TensorFlow, in a subprocess so
  this process never imports it (skipped without TensorFlow). The compose job runs it with the TensorFlow of
  the `tensorflow/tensorflow` image instead; the SavedModel format is the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.localstack import TritonNotFoundError, TritonServer, find_triton, free_port
from deploy.localstack.stack import GatewayProcess
from gateway.ctl.fleet import load_fleet
from gateway.ctl.main import main as modelyard

REPO = Path(__file__).resolve().parents[2]
TOKEN = "deploy-test-token"
FLEET = REPO / "deploy" / "compose" / "fleet.yaml"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(None, tmp_path, token=TOKEN)
    process.start()
    yield process
    process.stop()


def test_the_compose_fleet_file_applies_idempotently(
    gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = load_fleet(str(FLEET))
    apply = ["apply", "-f", str(FLEET), "--url", gateway.url, "--token", TOKEN]
    assert modelyard(apply) == 0
    assert capsys.readouterr().out.count(" created") == fleet.count()
    assert modelyard(apply) == 0  # a second run changes nothing
    assert capsys.readouterr().out.count(" unchanged") == fleet.count()

    headers = {"Authorization": f"Bearer {TOKEN}"}
    backends = httpx.get(f"{gateway.url}/admin/backends", headers=headers).json()["backends"]
    assert {b["id"] for b in backends} == set(fleet.backends)
    for backend in backends:
        expected = fleet.backends[backend["id"]]
        assert (backend["kind"], backend["url"], backend["grpc_url"], backend["capacity"]) == (
            expected["kind"],
            expected["url"],
            expected["grpc_url"],
            expected["capacity"],
        )
    models = httpx.get(f"{gateway.url}/admin/models", headers=headers).json()["models"]
    assert {m["name"]: (m["runtime"], m["source"]) for m in models} == {
        name: (m["runtime"], m["source"]) for name, m in fleet.models.items()
    }


def test_applying_with_a_wrong_token_fails_loudly(gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert modelyard(["apply", "-f", str(FLEET), "--url", gateway.url, "--token", "wrong"]) == 1
    assert "(401)" in capsys.readouterr().err


def test_add1_triton_model_answers_x_plus_one(tmp_path: Path) -> None:
    try:
        dist = find_triton()
    except TritonNotFoundError as exc:
        pytest.skip(f"no Triton here: {exc}")
    repository = tmp_path / "repo"
    shutil.copytree(REPO / "deploy" / "compose" / "models" / "triton" / "add1", repository / "add1")
    server = TritonServer(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=tmp_path / "triton.log",
        dist=dist,
    )
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        load = client.post("/v2/repository/models/add1/load")
        assert load.status_code == 200, f"{load.text}\n{server.log_tail()}"
        answer = client.post(
            "/v2/models/add1/infer",
            json={"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]},
        )
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert (output["name"], output["datatype"], output["data"]) == ("OUTPUT0", "FP32", [2.0, 3.0, 4.0])


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
def test_tf_example_model_is_a_servable_saved_model(tmp_path: Path) -> None:
    script = REPO / "deploy" / "compose" / "tfserving" / "make_example_model.py"
    check = textwrap.dedent(
        f"""
        import importlib.util, json, pathlib
        spec = importlib.util.spec_from_file_location("maker", {str(script)!r})
        maker = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(maker)
        root = pathlib.Path({str(tmp_path)!r})
        assert maker.main(["make_example_model.py", str(root)]) == 0
        assert maker.main(["make_example_model.py", str(root)]) == 0  # already there: left alone
        import tensorflow as tf
        path = root / maker.MODEL_NAME / str(maker.VERSION)
        loaded = tf.saved_model.load(str(path), tags=["serve"])  # the tag TF Serving loads
        serve = loaded.signatures["serving_default"]
        x = serve.structured_input_signature[1]["x"]
        y = serve(x=tf.constant([1.0, 2.0, 3.0]))["y"]
        print(json.dumps({{"name": maker.MODEL_NAME, "x": [x.dtype.name, x.shape.as_list()],
                          "y": y.numpy().tolist(), "files": sorted(p.name for p in path.iterdir())}}))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    models = load_fleet(str(FLEET)).models
    assert result["name"] in models and models[result["name"]]["runtime"] == "tfserving"
    assert result["x"] == ["float32", [None]]
    assert result["y"] == [2.0, 3.0, 4.0]
    assert "saved_model.pb" in result["files"]
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / result["name"])), "staging left behind"
