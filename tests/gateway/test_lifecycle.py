"""`modelyard serve` as a process: embedded Redis, and a clean SIGTERM that lets requests in flight finish."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import TOKEN, check_answer, infer_body
from tests.metrics_text import samples, total
from tests.waiting import eventually


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_lets_inflight_requests_finish_and_stops_the_embedded_redis(stack: LocalStack, tmp_path: Path) -> None:
    # No --redis-url: the gateway starts a real Redis of its own and says so.
    gw = GatewayProcess(None, tmp_path, token=TOKEN)
    gw.start()
    try:
        match = re.search(r"embedded Redis at (\S+) \(pid (\d+)\)", gw.log_tail())
        assert match, gw.log_tail()
        redis_pid = int(match.group(2))
        assert _alive(redis_pid)
        admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        t = stack.tritons[0]
        backend = {"kind": "triton", "url": t.url, "capacity": {"models": 2}}
        assert admin.put("/admin/backends/only", json=backend).status_code == 200
        assert admin.put("/admin/models/slow", json={"runtime": "triton"}).status_code == 200
        assert admin.post("/admin/models/slow/load").status_code == 200
        admin.close()

        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:  # the model takes 1 s to answer
            result["r"] = httpx.post(f"{gw.url}/v2/models/slow/infer", json=infer_body([3.0]), timeout=60)

        caller = threading.Thread(target=slow_request)
        caller.start()
        # SIGTERM once the gateway has the request (it counts a placement hit before forwarding it): sent
        # earlier, the request could meet a closed listener on a busy machine.
        eventually(
            lambda: total(samples(httpx.get(f"{gw.url}/metrics").text), "modelyard_placement_total", result="hit") >= 1,
            "the gateway took the slow request",
        )
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        caller.join()
        assert result["r"].status_code == 200
        check_answer("slow", [3.0], result["r"].json())
        assert gw.proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while _alive(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(redis_pid), "the embedded Redis outlived its gateway"
        assert "embedded Redis stopped" in gw.log_tail()
    finally:
        gw.stop()
        stack.unload_everything()
