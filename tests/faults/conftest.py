"""The fault suite's own real parts: a Redis with an append-only file and two Tritons, shared by the package's
tests (never the session stack, which other tests share), and per test two `modelyard serve` processes under a
fresh key prefix with short lease and timeout settings. Each test starts from running processes and empty Tritons.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.localstack.models import demo_model_names, write_model_repository
from deploy.localstack.stack import GatewayProcess
from deploy.localstack.triton import TritonServer
from tests.faults.procs import FaultRedis, stable_port
from tests.faults.proxy import FaultProxy
from tests.faults.recorder import correct, infer_body
from tests.waiting import eventually

MODELS = [*demo_model_names(8), "slowload"]
TOKEN = "faults-admin-token"
CAPACITY = 2  # models per Triton: 4 slots for 9 models, so cold traffic evicts
LEASE_TTL = 3.0
GATEWAY_FLAGS = (
    f"--lease-ttl={LEASE_TTL}",
    "--load-timeout=20",
    "--backend-timeout=5",
    "--usage-flush-interval=0.2",
    "--shutdown-grace=1",
    "--log-level=warning",
)


def offset(name: str) -> float:
    return float(MODELS.index(name))


def wait_for(
    what: str,
    cond: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.1,
    why: Callable[[], str] = lambda: "",
) -> float:
    """`tests.waiting.eventually` with the fault tests' defaults: poll `cond` until truthy, returning the seconds
    it took; errors from `cond` (the thing is still down) count as 'not yet'."""
    return eventually(cond, what, timeout, interval=interval, detail=why, retry_on=(Exception,))


@dataclass
class FaultStack:
    workdir: Path
    redis: FaultRedis
    tritons: list[TritonServer]
    gateways: list[GatewayProcess] = field(default_factory=list)
    proxies: list[FaultProxy] = field(default_factory=list)
    prefix: str = ""
    last_mismatch: str = ""  # what the last accounting comparison saw, for failure messages

    def loads(self) -> list[str]:
        try:
            return [ln.split()[0] for ln in (self.workdir / "loads.log").read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            return []

    def add_gateway(self, redis_url: str | None = None) -> GatewayProcess:
        gw = GatewayProcess(
            redis_url or self.redis.url, self.workdir, token=TOKEN, prefix=self.prefix, extra=GATEWAY_FLAGS
        )
        gw.start()
        self.gateways.append(gw)
        return gw

    def proxy(self, port: int) -> FaultProxy:
        p = FaultProxy(port).start()
        self.proxies.append(p)
        return p

    def admin(self, gw: GatewayProcess | None = None) -> httpx.Client:
        gw = gw or self.gateways[-1]
        return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def register(self, urls: list[str] | None = None, gw: GatewayProcess | None = None) -> None:
        with self.admin(gw) as admin:
            for i, t in enumerate(self.tritons):
                url = urls[i] if urls else t.url
                body = {"kind": "triton", "url": url, "grpc_url": t.grpc_url, "capacity": {"models": CAPACITY}}
                admin.put(f"/admin/backends/triton-{i}", json=body).raise_for_status()
            for name in MODELS:
                admin.put(f"/admin/models/{name}", json={"runtime": "triton"}).raise_for_status()

    def warm(self, *names: str) -> None:
        with self.admin() as admin:
            for name in names:
                admin.post(f"/admin/models/{name}/load").raise_for_status()

    def triton_ready(self, t: TritonServer) -> set[str]:
        index = httpx.post(f"{t.url}/v2/repository/index", json={}, timeout=2).json()
        return {e["name"] for e in index if e.get("state") == "READY"}

    def placement_ready(self, gw: GatewayProcess) -> dict[str, set[str]]:
        """Per backend, the models `gw`'s /admin/placement lists as ready."""
        with self.admin(gw) as admin:
            r = admin.get("/admin/placement", timeout=2)
        r.raise_for_status()
        return {
            b: {m["name"] for m in rec["models"] if m["state"] == "ready"} for b, rec in r.json()["backends"].items()
        }

    def placement_states(self, gw: GatewayProcess, state: str) -> set[str]:
        """Models with a copy in `state` anywhere, as `gw` sees it."""
        with self.admin(gw) as admin:
            backends = admin.get("/admin/placement", timeout=2).json()["backends"]
        return {m["name"] for rec in backends.values() for m in rec["models"] if m["state"] == state}

    def fresh_gateway_agrees(self, models: list[str]) -> float:
        """A new gateway, which knows only what Redis holds, agrees with the Tritons and serves `models`:
        proof that Redis itself is whole again, not just the old gateways' views. Returns the seconds from its
        readiness until its accounting matched."""
        gw = self.add_gateway()
        took = self.wait_accounting(20)
        for name in models:
            r = httpx.post(f"{gw.url}/v2/models/{name}/infer", json=infer_body([1.0]), timeout=20)
            assert r.status_code == 200, f"{name} via a fresh gateway: {r.status_code} {r.text}"
            assert correct(r.json(), name, [1.0 + offset(name)]), r.text
        return took

    def wait_accounting(self, timeout: float) -> float:
        """Wait until `accounting_matches`; returns the seconds it took."""
        return wait_for(
            "accounting equals the Tritons", self.accounting_matches, timeout, why=lambda: self.last_mismatch
        )

    def accounting_matches(self) -> bool:
        """Every gateway's /admin/placement lists, per backend, exactly the models its Triton reports READY."""
        truth = {f"triton-{i}": self.triton_ready(t) for i, t in enumerate(self.tritons)}
        views = {gw.url: self.placement_ready(gw) for gw in self.gateways if gw.proc is not None}
        self.last_mismatch = f"Tritons READY {truth}; gateways' ready copies {views}"
        return all(v == truth for v in views.values())


@pytest.fixture(scope="package")
def fault_parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    workdir = tmp_path_factory.mktemp("faults")
    write_model_repository(
        workdir / "models", MODELS, load_log=workdir / "loads.log", initialize_delay_s={"slowload": 2.5}
    )
    redis = FaultRedis(workdir / "redis-data", workdir / "redis.log")
    tritons = [
        TritonServer(
            workdir / "models",
            http_port=stable_port(),
            grpc_port=stable_port(),
            metrics_port=stable_port(),
            log_path=workdir / f"triton-{i}.log",
            exit_timeout=1,
        )
        for i in range(2)
    ]
    parts = FaultStack(workdir, redis, tritons)
    try:
        redis.start()
        for t in tritons:
            t.start()
        yield parts
    finally:
        for t in tritons:
            t.stop()
        redis.stop()


@pytest.fixture
def faults(fault_parts: FaultStack) -> Iterator[FaultStack]:
    """The shared parts, all running and holding nothing, under a fresh key prefix; gateways are the test's."""
    s = fault_parts
    if s.redis.proc is None:
        s.redis.start()
    for t in s.tritons:
        if not t.running:
            t.start()
        for name in s.triton_ready(t):
            httpx.post(f"{t.url}/v2/repository/models/{name}/unload", json={}, timeout=10)
    wait_for("Tritons empty", lambda: not any(s.triton_ready(t) for t in s.tritons))
    s.prefix = f"f{uuid.uuid4().hex[:8]}"
    yield s
    for gw in s.gateways:
        if gw.proc is not None:
            gw.proc.kill()  # SIGCONT not needed: SIGKILL ends a stopped process too
            gw.proc.wait()
            gw.proc = None
    s.gateways.clear()
    for p in s.proxies:
        p.stop()
    s.proxies.clear()
