"""The contract's error cases, each with its status and message, against a real `modelyard serve` process.

No Triton is needed for these: the backends registered here point at a closed port.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.localstack.stack import GatewayProcess
from deploy.localstack.triton import free_port
from gateway.embedded_redis import RedisServer

TOKEN = "contract-token"
ONE = {"models": 1}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("contract")
    with RedisServer() as redis:
        g = GatewayProcess(
            redis.url,
            workdir,
            token=TOKEN,
            prefix=f"c{uuid.uuid4().hex[:6]}",
            extra=["--max-body-bytes", "1000", "--load-timeout", "2"],
        )
        g.start()
        yield g
        assert g.stop() == 0


@pytest.fixture
def admin(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


def _error(r: httpx.Response, status: int, *fragments: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    for f in fragments:
        assert f in message, message


def test_admin_needs_the_bearer_token(gw: GatewayProcess) -> None:
    _error(httpx.get(f"{gw.url}/admin/backends"), 401, "Authorization: Bearer")
    _error(httpx.get(f"{gw.url}/admin/models", headers={"Authorization": "Bearer nope"}), 401, "wrong admin token")
    _error(httpx.put(f"{gw.url}/admin/models/x", json={"runtime": "triton"}), 401, "admin token")
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert "modelyard_requests" in httpx.get(f"{gw.url}/metrics").text
    schema = httpx.get(f"{gw.url}/admin/openapi.json").json()  # as README says
    assert "/admin/models/{name}" in schema["paths"] and "/admin/backends/{backend_id}" in schema["paths"]


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/admin/models/-bad", {"runtime": "triton"}, "invalid model name '-bad'"),
        ("/admin/models/" + "a" * 129, {"runtime": "triton"}, "at most 128 characters"),
        ("/admin/models/ok", {"runtime": "onnx"}, "runtime is required and must be one of"),
        ("/admin/models/ok", {}, "runtime is required"),
        ("/admin/models/ok", {"runtime": "triton", "max_copies": 0}, "max_copies must be an integer"),
        ("/admin/models/ok", {"runtime": "triton", "source": "ftp://x"}, "source must be null, file:///"),
        ("/admin/models/ok", {"runtime": "triton", "colour": 1}, "unknown field(s) ['colour']"),
        ("/admin/backends/b!", {"kind": "triton"}, "invalid backend name 'b!'"),
        ("/admin/backends/b1", {"kind": "triton", "url": "http://x:1", "capacity": {"models": 0}}, "capacity.models"),
        (
            "/admin/backends/b1",
            {"kind": "tfserving", "url": "http://x:1", "capacity": {"models": 1}},
            "grpc_url is required",
        ),
        (
            "/admin/backends/b1",
            {"kind": "triton", "url": "x:1", "capacity": {"models": 1}},
            "url must be an http(s) URL",
        ),
        (
            "/admin/backends/b1",
            {
                "kind": "tfserving",
                "url": "http://x:1",
                "grpc_url": "x:2",
                "capacity": {"models": 1},
                "model_base_path": "models",
            },
            "model_base_path must be an absolute path or a URI",
        ),
        (
            "/admin/backends/b1",
            {"kind": "triton", "url": "http://x:1", "capacity": {"models": 1}, "model_base_path": "/models"},
            "model_base_path is for tfserving backends",
        ),
    ],
)
def test_malformed_registrations_are_400_with_the_reason(
    admin: httpx.Client, path: str, body: dict[str, object], fragment: str
) -> None:
    _error(admin.put(path, json=body), 400, fragment)


def test_a_body_that_is_not_json_is_400(admin: httpx.Client) -> None:
    _error(admin.put("/admin/models/ok", content=b"{not json"), 400, "not valid JSON")


def test_unknown_names_are_404(gw: GatewayProcess, admin: httpx.Client) -> None:
    _error(admin.get("/admin/models/never-registered"), 404, "model 'never-registered' is not registered")
    _error(admin.get("/admin/backends/nobackend"), 404, "backend 'nobackend' is not registered")
    _error(httpx.post(f"{gw.url}/v2/models/nobody/infer", json={}), 404, "no model or route named 'nobody'")
    _error(httpx.get(f"{gw.url}/v2/models/nobody"), 404, "nobody")
    _error(httpx.post(f"{gw.url}/v2/repository/models/x/load"), 404, "repository API is not exposed")


def test_a_model_too_big_for_every_backend_is_422(admin: httpx.Client) -> None:
    backend = {
        "kind": "triton",
        "url": f"http://127.0.0.1:{free_port()}",
        "capacity": {"models": 2, "memory_bytes": 1000},
    }
    assert admin.put("/admin/backends/small", json=backend).status_code == 200
    _error(admin.put("/admin/models/huge", json={"runtime": "triton", "memory_bytes": 5000}), 422, "needs 5000 bytes")
    _error(admin.get("/admin/models/huge"), 404)  # refused, so not registered
    assert admin.put("/admin/models/fits", json={"runtime": "triton", "memory_bytes": 900}).status_code == 200
    admin.delete("/admin/models/fits")
    admin.delete("/admin/backends/small")


def test_body_over_the_limit_is_413(gw: GatewayProcess, admin: httpx.Client) -> None:
    admin.put("/admin/models/big-body", json={"runtime": "triton"})
    _error(httpx.post(f"{gw.url}/v2/models/big-body/infer", content=b"x" * 5000), 413, "limit of 1000 bytes")


def test_no_backend_available_is_503_with_retry_after(gw: GatewayProcess, admin: httpx.Client) -> None:
    admin.put("/admin/models/lonely", json={"runtime": "triton"})
    r = httpx.post(f"{gw.url}/v2/models/lonely/infer", json={"inputs": []}, timeout=30)
    _error(r, 503, "no healthy triton backend")
    assert int(r.headers["retry-after"]) >= 1
    # A registered backend that is down is no better, and says so the same way.
    backend = {"kind": "triton", "url": f"http://127.0.0.1:{free_port()}", "capacity": {"models": 2}}
    assert admin.put("/admin/backends/down", json=backend).json()["healthy"] is False
    r = httpx.post(f"{gw.url}/v2/models/lonely/infer", json={"inputs": []}, timeout=30)
    _error(r, 503, "no healthy triton backend")
    admin.delete("/admin/backends/down")


def test_wrong_method_is_400(gw: GatewayProcess, admin: httpx.Client) -> None:
    admin.put("/admin/models/m", json={"runtime": "triton"})
    _error(httpx.get(f"{gw.url}/v2/models/m/infer"), 400, "use POST")


def test_records_listing_paging_and_delete(admin: httpx.Client) -> None:
    for i in range(5):
        assert admin.put(f"/admin/models/page-{i}", json={"runtime": "triton", "memory_bytes": 10}).status_code == 200
    record = admin.get("/admin/models/page-0").json()
    assert record["copies"] == [] and record["loads"] == 0 and record["last_used"] is None
    assert record["runtime"] == "triton" and record["memory_bytes"] == 10 and record["pinned"] is False
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = admin.get("/admin/models", params=params).json()
        seen += [m["name"] for m in page["models"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [n for n in seen if n.startswith("page-")] == [f"page-{i}" for i in range(5)]
    assert admin.delete("/admin/models/page-0").status_code == 200
    _error(admin.get("/admin/models/page-0"), 404)
    _error(admin.get("/admin/models", params={"limit": "0"}), 400, "limit must be between")
    backend = {"kind": "triton", "url": "http://127.0.0.1:9", "grpc_url": "127.0.0.1:10", "capacity": {"models": 3}}
    rec = admin.put("/admin/backends/rec", json=backend).json()
    assert rec == {
        "id": "rec",
        "kind": "triton",
        "url": "http://127.0.0.1:9",
        "grpc_url": "127.0.0.1:10",
        "capacity": {"models": 3, "memory_bytes": None},
        "healthy": False,
        "draining": False,
        "used": {"models": 0, "memory_bytes": 0},
        "models": [],
    }
    assert "rec" in [b["id"] for b in admin.get("/admin/backends").json()["backends"]]
    assert "rec" in admin.get("/admin/placement").json()["backends"]
    assert admin.delete("/admin/backends/rec").status_code == 200
    _error(admin.get("/admin/backends/rec"), 404)


def test_a_version_that_is_not_a_number_is_400_and_never_reaches_a_backend(
    gw: GatewayProcess, admin: httpx.Client
) -> None:
    admin.put("/admin/models/m", json={"runtime": "triton"})
    for version in ("1%0d%0aX-Injected:%201", "1%20x", "abc"):
        _error(httpx.post(f"{gw.url}/v2/models/m/versions/{version}/infer", json={}), 400, "version must be a positive")


@pytest.mark.parametrize(
    ("method", "path", "status", "fragment"),
    [
        ("GET", "/%ff%fe", 404, "no such path"),
        ("GET", "/nothing/here", 404, "no such path /nothing/here"),
        ("DELETE", "/v2", 405, "DELETE is not allowed on /v2; use GET"),
        ("POST", "/v2/health/live", 405, "use GET"),
        ("POST", "/readyz", 405, "POST is not allowed on /readyz"),
        ("PATCH", "/admin/models/m", 405, "PATCH is not allowed on /admin/models/m"),
        ("GET", "/admin/nothing", 404, "no such path /admin/nothing"),
        ("GET", "/admin/models?limit=many", 400, "limit"),
        ("GET", "/v1/other", 404, "no such path"),
    ],
)
def test_unknown_paths_methods_and_parameters_answer_in_the_contracts_shape(
    admin: httpx.Client, method: str, path: str, status: int, fragment: str
) -> None:
    r = admin.request(method, path)
    _error(r, status, fragment)
    assert "detail" not in r.json()


def test_readiness_says_ready_with_the_last_sync(gw: GatewayProcess) -> None:
    body = httpx.get(f"{gw.url}/readyz").json()
    assert body["status"] == "ready" and body["redis"] == "up" and body["last_sync"] > 0
