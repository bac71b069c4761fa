"""One-shot registration for the docker-compose stack: the backends and the example models, through the
gateway's admin API, as an operator would do it by hand (docs/deploy.md shows the same calls with curl).

compose's `register` job runs this file in the gateway's image once the gateway is healthy (standard library
only, so it runs anywhere with Python 3.11):

    GATEWAY_URL=http://gateway:8080 MODELYARD_ADMIN_TOKEN=... python register.py

Every call is a PUT, so running it again changes nothing. The URLs below are compose service names and the ports
those services are started with; tests/deploy checks that they agree with docker-compose.yml.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

# Triton: capacity in models. TF Serving: `model_base_path` is where its /models volume is mounted.
BACKENDS: dict[str, dict[str, Any]] = {
    "triton-a": {
        "kind": "triton",
        "url": "http://triton-a:8000",
        "grpc_url": "triton-a:8001",
        "capacity": {"models": 8},
    },
    "triton-b": {
        "kind": "triton",
        "url": "http://triton-b:8000",
        "grpc_url": "triton-b:8001",
        "capacity": {"models": 8},
    },
    "tfserving": {
        "kind": "tfserving",
        "url": "http://tfserving:8501",
        "grpc_url": "tfserving:8500",
        "capacity": {"models": 4},
        "model_base_path": "/models",
    },
}

# `add1` comes from MinIO (minio-init copied deploy/compose/models/ into the `models` bucket); `add1-tf` from TF
# Serving's own /models volume (source null), because the stock TF Serving image cannot read s3:// itself.
MODELS: dict[str, dict[str, Any]] = {
    "add1": {"runtime": "triton", "source": "s3://models/triton/add1"},
    "add1-tf": {"runtime": "tfserving", "source": None},
}


def _call(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise SystemExit(f"register: {method} {path} answered {exc.code}: {detail}") from exc


def wait_ready(base: str, timeout: float) -> None:
    """Wait until the gateway's /readyz answers 200 (it reaches Redis)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base.rstrip("/") + "/readyz", timeout=5):
                return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"register: the gateway at {base} is not ready after {timeout:g} s: {exc}") from exc
            time.sleep(1.0)


def register(base: str, token: str) -> None:
    for backend_id, backend in BACKENDS.items():
        _call(base, token, "PUT", f"/admin/backends/{backend_id}", backend)
        print(f"register: backend {backend_id} -> {backend['url']}", flush=True)
    for name, model in MODELS.items():
        _call(base, token, "PUT", f"/admin/models/{name}", model)
        print(f"register: model {name} ({model['runtime']}, source {model['source']})", flush=True)


def main() -> int:
    base = os.environ.get("GATEWAY_URL", "http://gateway:8080")
    token = os.environ.get("MODELYARD_ADMIN_TOKEN", "")
    if not token:
        raise SystemExit("register: set MODELYARD_ADMIN_TOKEN to the gateway's admin token")
    wait_ready(base, float(os.environ.get("REGISTER_WAIT_SECONDS", "120")))
    register(base, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
