"""`modelyard serve --workers 2` with real processes: the two workers share the HTTP and gRPC ports and the embedded
Redis the parent started, requests reach both, a cold model is loaded once under concurrent requests reaching
both, a killed worker is replaced, and SIGTERM to the parent stops every worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2 as pb

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import MODELS, TOKEN, check_answer, infer_body
from tests.waiting import eventually as wait_for

COLD = MODELS[7]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def workers(stack: LocalStack, tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(None, tmp_path, token=TOKEN, extra=["--workers", "2"])  # None: the embedded Redis
    gw.start()
    yield gw
    gw.stop()
    stack.unload_everything()


def worker_of(gw: GatewayProcess, path: str = "/healthz") -> str:
    """`index/pid` of the worker that answered, on a new connection (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        resp = client.get(path)
    resp.raise_for_status()
    return resp.headers["x-modelyard-worker"]


def test_two_workers_behave_as_one_gateway(workers: GatewayProcess, stack: LocalStack) -> None:
    gw = workers
    with stack.admin(gw) as admin:
        for i, t in enumerate(stack.tritons):
            spec = {"kind": "triton", "url": t.url, "grpc_url": t.grpc_url, "capacity": {"models": 2}}
            admin.put(f"/admin/backends/triton-{i}", json=spec).raise_for_status()
        admin.put(f"/admin/models/{COLD}", json={"runtime": "triton"}).raise_for_status()

    # Connections are spread over both workers.
    seen: set[str] = set()

    def both_answered() -> bool:
        seen.add(worker_of(gw))
        return len({w.split("/")[0] for w in seen}) == 2

    wait_for(both_answered, "answers from both workers")

    # A cold model under concurrent requests that reach both workers: one load, every answer right.
    loads_before = stack.loads().count(COLD)

    def infer(i: int) -> httpx.Response:
        with httpx.Client(base_url=gw.url, timeout=120) as client:
            return client.post(f"/v2/models/{COLD}/infer", json=infer_body([float(i)]))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(infer, range(16)))
    for i, resp in enumerate(answers):
        assert resp.status_code == 200, resp.text
        check_answer(COLD, [float(i)], resp.json())
    assert len({r.headers["x-modelyard-worker"].split("/")[0] for r in answers}) == 2
    assert stack.loads().count(COLD) == loads_before + 1

    # The gRPC port is shared too: both workers answer it (each new channel is a new connection).
    for _ in range(4):
        with grpc.insecure_channel(gw.grpc_url) as channel:
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            assert live(pb.ServerLiveRequest(), timeout=10).live

    # A worker that dies is replaced by a new process under the same index.
    index, pid = next(iter(seen)).split("/")
    os.kill(int(pid), signal.SIGKILL)
    wait_for(
        lambda: any(w.startswith(f"{index}/") and w != f"{index}/{pid}" for w in {worker_of(gw) for _ in range(4)}),
        f"worker {index} replaced",
    )
    pids = {int(worker_of(gw).split("/")[1]) for _ in range(20)}

    # SIGTERM to the parent stops every worker, and the parent exits 0.
    assert gw.stop() == 0
    assert not any(alive(p) for p in pids)
