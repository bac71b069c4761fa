"""A whole local stack of real parts, for the demo, the tests and the benchmarks.

`LocalStack` starts a real redis-server, Triton servers from the nvidia-pytriton wheel over one generated
model repository, and `modelyard serve` processes sharing that Redis; `register()` declares the backends and
models through the admin API, as an operator would. Everything binds 127.0.0.1 and is stopped by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.models import Stall, write_model_repository
from deploy.localstack.triton import TritonServer, free_port
from gateway.embedded_redis import RedisServer


class GatewayProcess:
    """One `modelyard serve` process."""

    def __init__(
        self,
        redis_url: str | None,
        workdir: Path,
        *,
        token: str,
        prefix: str = "modelyard",
        extra: Sequence[str] = (),
    ) -> None:
        """`redis_url` None: the gateway starts its own embedded Redis."""
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.token = token
        self.log_path = workdir / f"gateway-{self.http_port}.log"
        self.args = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"]
        self.args += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        # The embedded Redis keeps its state in the workdir, not in the folder the tests or the demo run from.
        self.args += ["--redis-url", redis_url] if redis_url else [f"--data-dir={workdir / '.modelyard'}"]
        # `--flag=value`: a token may start with '-' (token_urlsafe does, 1 in 32), which argparse would take
        # for a flag in the two-word form.
        self.args += [f"--admin-token={token}", f"--redis-prefix={prefix}", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC data plane, as `tritonclient.grpc` takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


class LocalStack:
    def __init__(
        self,
        workdir: Path,
        model_names: Sequence[str],
        *,
        tritons: int = 2,
        failing: Sequence[str] = (),
        execute_delay_s: dict[str, float] | None = None,
        stalls: dict[str, Stall] | None = None,
        token: str = "local-admin-token",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_names = list(model_names)
        self.repo = self.workdir / "models"
        self.load_log = self.workdir / "loads.log"
        self.token = token
        self.redis = RedisServer(log_path=self.workdir / "redis.log")
        self.tritons = [
            TritonServer(
                self.repo,
                http_port=free_port(),
                grpc_port=free_port(),
                metrics_port=free_port(),
                log_path=self.workdir / f"triton-{i}.log",
                # the stubs' stall decisions differ per server (deploy/localstack/models.py)
                extra_env={"MODELYARD_LOCALSTACK_SERVER": f"triton-{i}"},
            )
            for i in range(tritons)
        ]
        self.gateways: list[GatewayProcess] = []
        self._failing = list(failing)
        self._delays = execute_delay_s or {}
        self._stalls = stalls or {}

    def start(self) -> None:
        write_model_repository(
            self.repo,
            self.model_names,
            load_log=self.load_log,
            failing=self._failing,
            execute_delay_s=self._delays,
            stalls=self._stalls,
        )
        self.redis.start()
        for t in self.tritons:
            t.start()

    def add_gateway(self, prefix: str = "modelyard", extra: Sequence[str] = ()) -> GatewayProcess:
        gw = GatewayProcess(self.redis.url, self.workdir, token=self.token, prefix=prefix, extra=extra)
        gw.start()
        self.gateways.append(gw)
        return gw

    def admin(self, gateway: GatewayProcess | None = None) -> httpx.Client:
        gw = gateway or self.gateways[0]
        return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=180)

    def register(
        self, capacity: int, models: Sequence[str] | None = None, *, extra: dict[str, dict[str, Any]] | None = None
    ) -> None:
        with self.admin() as admin:
            for i, t in enumerate(self.tritons):
                r = admin.put(
                    f"/admin/backends/triton-{i}",
                    json={"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": capacity}},
                )
                r.raise_for_status()
            for name in models if models is not None else self.model_names:
                r = admin.put(f"/admin/models/{name}", json={"runtime": "triton", **(extra or {}).get(name, {})})
                r.raise_for_status()

    def loads(self) -> list[str]:
        """Model names, one per real load Triton did (each model's initialize writes a line)."""
        try:
            return [line.split()[0] for line in self.load_log.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def holding(self, triton: TritonServer) -> list[str]:
        """Models that hold memory on a Triton now (READY, LOADING or UNLOADING in its repository index)."""
        index = httpx.post(f"{triton.url}/v2/repository/index", json={}, timeout=10).json()
        return [e["name"] for e in index if e.get("state") in ("READY", "LOADING", "UNLOADING")]

    def unload_everything(self, timeout: float = 30.0) -> None:
        for t in self.tritons:
            for name in self.holding(t):
                httpx.post(f"{t.url}/v2/repository/models/{name}/unload", json={}, timeout=10)
        deadline = time.monotonic() + timeout
        while any(self.holding(t) for t in self.tritons):
            if time.monotonic() > deadline:
                raise RuntimeError("Triton servers still hold models")
            time.sleep(0.1)

    def stop_gateways(self) -> None:
        for gw in self.gateways:
            gw.stop()
        self.gateways.clear()

    def stop(self) -> None:
        self.stop_gateways()
        for t in self.tritons:
            try:
                t.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {t.url}: {exc}", file=sys.stderr)
        self.redis.stop()

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
