"""`make demo ARGS='--duration 20 --exit'`, end to end: real Redis, two real Tritons, one gateway, as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _field(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in the demo's output:\n{text}"
    return found


@pytest.mark.timeout(240)
def test_demo_runs_and_reports_a_clean_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "deploy.localstack.demo", "--duration", "20", "--exit", "--workdir", str(workdir)]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )
    try:
        out, _ = proc.communicate(timeout=220)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the demo stop what it started; then make sure.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"the demo did not finish in time:\n{out}")

    assert proc.returncode == 0, out
    assert int(_field(r"^\s*errors\s+(\d+)\s*$", out)[1]) == 0
    assert int(_field(r"^\s*evictions\s+(\d+)", out)[1]) >= 1
    served = _field(r"served (\d+) distinct models with (\d+) slots", out)
    assert int(served[1]) > int(served[2]) == 16
    capacity = _field(r"^\s*capacity\s+max held at once: (.*)$", out)[1]
    held = re.findall(r"(triton-\d+) (\d+)/(\d+)", capacity)
    assert len(held) == 2, capacity
    for backend, most, cap in held:
        assert int(most) <= int(cap), f"{backend} held {most} models with capacity {cap}"
    assert "never exceeded" in capacity
    # Real loads happened on Triton, and everything the demo started is gone.
    loads = int(_field(r"^\s*loads\s+\S+ \(gateway /metrics\); (\d+) real loads", out)[1])
    assert loads > 16
    assert "stopping the gateway, the Triton servers and Redis ... done" in out
    gateway_port = _field(r"starting the gateway .*http://127\.0\.0\.1:(\d+)", out)[1]
    redis_port = _field(r"starting Redis .*redis://127\.0\.0\.1:(\d+)", out)[1]
    for pattern in (str(workdir), f"--http-port {gateway_port} ", f"127.0.0.1:{redis_port}"):
        left = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout.split()
        assert not left, f"processes matching {pattern!r} still running: {left}"
