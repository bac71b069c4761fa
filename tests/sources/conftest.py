"""Fixtures for model sources: an S3-compatible server (moto_server on 127.0.0.1) for the session, a fresh bucket
per test, model folders written by deploy.localstack.models, and gateways that read them. The session's Redis
and Triton servers are tests/conftest.py's `stack`; the models here have names that the Tritons' own repository
does not hold, so whatever answers was loaded from the files the gateway sent."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from deploy.localstack.models import write_model
from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import MODELS, StartGateway
from tests.sources.s3server import MotoServer


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    name = f"models-{uuid.uuid4().hex[:10]}"
    moto.client().create_bucket(Bucket=name)
    moto.reset_recording()
    return name


def model_folder(root: Path, name: str, offset: float, *, version: int = 1, load_log: Path | None = None) -> Path:
    """A Python-backend model directory at `root/name` whose version `version` answers INPUT0 + offset and its
    name (deploy.localstack.models' test model); an existing directory gets the version added or replaced."""
    scratch = root / f".scratch-{uuid.uuid4().hex[:8]}"
    built = write_model(scratch, name, offset, load_log=load_log)
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built / "config.pbtxt", target / "config.pbtxt")
    shutil.copytree(built / "1", target / str(version), dirs_exist_ok=True)
    shutil.rmtree(scratch)
    return target


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


SourceGateway = Callable[..., GatewayProcess]


@pytest.fixture
def source_gateway(
    stack: LocalStack,
    start_gateway: StartGateway,
    moto: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SourceGateway]:
    """Start a gateway that reads s3:// sources from the test's moto server (its AWS settings in the environment,
    as an operator would give them) with a model cache under the test's tmp_path; `env` overrides variables.
    On teardown, the models the Tritons loaded by content are unloaded too (the index, which the stack's own
    cleanup reads, does not show them)."""

    def start(*extra: str, env: dict[str, str] | None = None, cache_dir: Path | None = None) -> GatewayProcess:
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        for key, value in {**moto.env(), **(env or {})}.items():
            monkeypatch.setenv(key, value)
        cache = cache_dir or tmp_path / "model-cache"
        return start_gateway("--s3-endpoint-url", moto.url, "--model-cache-dir", str(cache), *extra)

    yield start
    stack.stop_gateways()
    unload_content_models(stack)


def unload_content_models(stack: LocalStack) -> None:
    for t in stack.tritons:
        stats = httpx.get(f"{t.url}/v2/models/stats", timeout=10).json().get("model_stats", [])
        for name in {m["name"] for m in stats} - set(MODELS):
            httpx.post(f"{t.url}/v2/repository/models/{name}/unload", json={}, timeout=10)


def register_backends(stack: LocalStack, capacity: int) -> None:
    stack.register(capacity, models=[])
