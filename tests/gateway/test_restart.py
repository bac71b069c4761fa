"""The embedded default keeps its state: `modelyard serve` without --redis-url, stopped and started again with
the same command in the same folder, has every backend, model and route, and the model Triton still holds
answers warm, without a new load (counted from Triton's own load log). The data dir is locked against a
second gateway, and the lock lasts until the embedded Redis is gone too, also when the gateway is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.localstack.stack import GatewayProcess, LocalStack
from deploy.localstack.triton import free_port
from gateway.embedded_redis import DataDirLock
from tests.gateway.conftest import MODELS, TOKEN, check_answer, infer_body

ROOT = Path(__file__).resolve().parents[2]


def _registry(admin: httpx.Client) -> dict[str, Any]:
    models = admin.get("/admin/models").json()["models"]
    return {
        "backends": [
            {k: b[k] for k in ("id", "kind", "url", "grpc_url", "capacity")}
            for b in admin.get("/admin/backends").json()["backends"]
        ],
        "models": [{k: v for k, v in m.items() if k not in ("copies", "last_used", "loads")} for m in models],
        "routes": admin.get("/admin/routes").json()["routes"],
        "ready": {m["name"]: [c["backend"] for c in m["copies"] if c["state"] == "ready"] for m in models},
    }


def _default_data_dir(gw: GatewayProcess) -> GatewayProcess:
    gw.args = [a for a in gw.args if not a.startswith("--data-dir")]  # the default: .modelyard/ in the cwd
    return gw


def test_restart_keeps_the_registry_and_the_warm_copies(
    stack: LocalStack, new_loads: Callable[[], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --data-dir is .modelyard/ in the working directory
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    warm, cold, other = MODELS[0], MODELS[1], MODELS[2]
    triton = stack.tritons[0]
    gw = _default_data_dir(GatewayProcess(None, tmp_path, token=TOKEN))
    try:
        gw.start()
        with stack.admin(gw) as admin:
            admin.put(
                "/admin/backends/t0",
                json={"kind": "triton", "url": triton.url, "grpc_url": triton.grpc_url, "capacity": {"models": 2}},
            ).raise_for_status()
            for name in (warm, cold, other):
                admin.put(f"/admin/models/{name}", json={"runtime": "triton"}).raise_for_status()
            route = {"splits": [{"model": warm, "weight": 100}, {"model": cold, "weight": 0}]}
            admin.put("/admin/routes/front", json=route).raise_for_status()
            r = httpx.post(f"{gw.url}/v2/models/front/infer", json=infer_body([1.0]), timeout=60)
            assert r.status_code == 200 and r.headers["x-modelyard-cold"] == "1"
            before = _registry(admin)
        assert new_loads() == [warm] and before["ready"] == {warm: ["t0"], cold: [], other: []}

        # A second gateway on the same data dir refuses to start, in one line, and harms nothing.
        second = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", f"--http-port={free_port()}", "--admin-token=other"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        refusal = second.stderr.strip().splitlines()[-1]
        assert "is in use by another gateway" in refusal and str(tmp_path / ".modelyard") in refusal

        assert gw.stop() == 0
        assert (tmp_path / ".modelyard" / "modelyard.aof").stat().st_size > 0

        # The same command (new ports: the old ones may linger).
        gw = _default_data_dir(GatewayProcess(None, tmp_path, token=TOKEN))
        gw.start()
        with stack.admin(gw) as admin:
            assert _registry(admin) == before
        r = httpx.post(f"{gw.url}/v2/models/front/infer", json=infer_body([2.0]), timeout=60)
        assert r.status_code == 200 and "x-modelyard-cold" not in r.headers
        check_answer(warm, [2.0], r.json())
        assert new_loads() == [warm]  # adopted, not loaded again

        # Killed outright, and started again at once: the new gateway waits for the old one's Redis to finish
        # writing (it still holds the lock) and then has everything too.
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        gw = _default_data_dir(GatewayProcess(None, tmp_path, token=TOKEN))
        gw.start()
        with stack.admin(gw) as admin:
            assert _registry(admin) == before
        assert new_loads() == [warm]
    finally:
        gw.stop()
        stack.unload_everything()
    # Both the gateway and its embedded Redis are gone: the lock is free again.
    lock = DataDirLock(tmp_path / ".modelyard")
    lock.acquire()
    lock.release()
