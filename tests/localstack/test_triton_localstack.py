"""The local stack against the real Triton from the nvidia-pytriton wheel."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from deploy.localstack import (
    TritonNotFoundError,
    TritonServer,
    TritonStartError,
    demo_model_names,
    find_triton,
    free_port,
    model_offset,
    write_model_repository,
)

NAMES = demo_model_names(3)


def _server(repo: Path, log: Path) -> TritonServer:
    return TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=log)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); only a reaped or running process matters here.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_model_helpers() -> None:
    assert demo_model_names(3) == ["m000", "m001", "m002"]
    assert demo_model_names(1001, prefix="x")[-1] == "x1000"
    assert model_offset(NAMES, "m002") == 2.0
    with pytest.raises(ValueError):
        write_model_repository(Path("/nonexistent"), ["a", "a"])


def test_find_triton_builds_backend_dir_once(tmp_path: Path) -> None:
    first = find_triton(cache_dir=tmp_path)
    python_dir = first.backend_dir / "python"
    names = {p.name for p in python_dir.iterdir()}
    assert {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"} <= names
    assert first.binary.is_file() and first.lib_dir.is_dir()
    inode = python_dir.stat().st_ino
    assert find_triton(cache_dir=tmp_path) == first
    assert python_dir.stat().st_ino == inode  # reused, not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_find_triton_without_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, package=None: None)
    with pytest.raises(TritonNotFoundError, match=r"pip install 'modelyard\[local\]'"):
        find_triton(cache_dir=tmp_path)


def test_load_infer_unload(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    load_log = tmp_path / "loads.log"
    write_model_repository(repo, NAMES, load_log=load_log)
    model = "m001"
    offset = model_offset(NAMES, model)

    with _server(repo, tmp_path / "triton.log") as server:
        assert server.url == f"http://127.0.0.1:{server.http_port}"
        assert server.grpc_url == f"127.0.0.1:{server.grpc_port}"
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get(f"/v2/models/{model}/ready").status_code == 400  # explicit mode: nothing loaded
            assert client.post(f"/v2/repository/models/{model}/load").status_code == 200
            assert client.get(f"/v2/models/{model}/ready").status_code == 200
            # Loading a loaded model whose files did not change is a no-op (no second initialize).
            assert client.post(f"/v2/repository/models/{model}/load").status_code == 200

            body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0, 3.0]}]}
            answer = client.post(f"/v2/models/{model}/infer", json=body)
            assert answer.status_code == 200, answer.text
            outputs = {o["name"]: o for o in answer.json()["outputs"]}
            assert outputs["OUTPUT0"]["data"] == [1.0 + offset, 2.0 + offset, 3.0 + offset]
            assert outputs["MODEL_NAME"]["data"] == [model]

            tc = triton_http.InferenceServerClient(url=f"127.0.0.1:{server.http_port}")
            try:
                data = np.arange(5, dtype=np.float32)
                infer_input = triton_http.InferInput("INPUT0", [5], "FP32")
                infer_input.set_data_from_numpy(data, binary_data=True)
                result = tc.infer(
                    model,
                    [infer_input],
                    outputs=[
                        triton_http.InferRequestedOutput("OUTPUT0", binary_data=True),
                        triton_http.InferRequestedOutput("MODEL_NAME", binary_data=True),
                    ],
                )
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + np.float32(offset))
                assert result.as_numpy("MODEL_NAME").tolist() == [model.encode()]
            finally:
                tc.close()

            assert client.post(f"/v2/repository/models/{model}/unload").status_code == 200
            index = client.post("/v2/repository/index", json={}).json()
            assert {e["name"] for e in index} == set(NAMES)

        loads = load_log.read_text().splitlines()
        assert [line.split()[0] for line in loads] == [model]
        stub_pid = int(loads[0].split()[1])
    # stop() ends the whole process group: the stub is gone, and it was finalized (unloaded) first.
    assert not server.running
    assert not _pid_alive(stub_pid)
    assert [line.split()[:2] for line in Path(f"{load_log}.unload").read_text().splitlines()] == [[model, "unload"]]


def test_start_failure_reports_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model_repository(repo, NAMES[:1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(
            repo, http_port=port, grpc_port=free_port(), metrics_port=free_port(), log_path=tmp_path / "t.log"
        )
        with pytest.raises(TritonStartError) as info:
            server.start(timeout=30)
    assert "tritonserver" in str(info.value)
    assert not server.running
