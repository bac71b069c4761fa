"""`modelyard apply|diff|get` against real `modelyard serve` processes and real Tritons (the session stack).

The command line runs in this process (`gateway.ctl.main.main`, what the `modelyard` script calls), except
where its dispatch from `gateway.cli` is the point; `serve --config` runs as a process of its own.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.localstack.stack import GatewayProcess, LocalStack
from gateway.ctl.main import main as ctl
from tests.gateway.conftest import MODELS, TOKEN, StartGateway
from tests.metrics_text import samples, total
from tests.waiting import eventually

A, B, C = MODELS[0], MODELS[1], MODELS[2]


def run(capsys: pytest.CaptureFixture[str], gw: GatewayProcess, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = ctl([args[0], "--url", gw.url, "--token", TOKEN, *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def fleet(stack: LocalStack, capacity: int = 2, models: tuple[str, ...] = (A, B, C)) -> dict[str, Any]:
    t0, t1 = stack.tritons
    return {
        "backends": [
            {"id": "t0", "kind": "triton", "url": t0.url, "grpc_url": t0.grpc_url, "capacity": {"models": capacity}},
            {"id": "t1", "kind": "triton", "url": t1.url, "capacity": {"models": 2, "memory_bytes": 10**9}},
        ],
        "models": [
            {"name": A, "runtime": "triton", "pinned": True},
            {"name": B, "runtime": "triton", "memory_bytes": 1000, "hedge": {"after_ms": 40}},
            *({"name": m, "runtime": "triton"} for m in models[2:]),
        ],
        "routes": [
            {
                "name": "front",
                "splits": [{"model": A, "weight": 90}, {"model": B, "weight": 10}],
                "shadows": [{"model": models[2], "percent": 50}] if len(models) > 2 else [],
                "sticky_header": "x-user-id",
            }
        ],
    }


def write(path: Path, data: Any) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def admin_writes(gw: GatewayProcess) -> float:
    """Admin writes the gateway made to Redis (its own counter)."""
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return total(samples(text), "modelyard_redis_calls_total", kind="admin")


def test_apply_diff_prune_dry_run_and_idempotence(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    path = write(tmp_path / "fleet.yaml", fleet(stack))

    code, out, _ = run(capsys, gw, "diff", "-f", path)
    assert code == 1 and "model/" + A + " would be created" in out and "route/front would be created" in out
    code, out, _ = run(capsys, gw, "apply", "-f", path, "--dry-run")
    assert code == 0 and out.count("created (dry run)") == 6
    assert httpx.get(f"{gw.url}/admin/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()["models"] == []

    code, out, _ = run(capsys, gw, "apply", "-f", path)
    assert code == 0, out
    assert out.splitlines() == [
        "backend/t0 created",
        "backend/t1 created",
        f"model/{A} created",
        f"model/{B} created",
        f"model/{C} created",
        "route/front created",
    ]
    writes = admin_writes(gw)
    code, out, _ = run(capsys, gw, "apply", "-f", path)
    assert code == 0 and out.count("unchanged") == 6 and len(out.splitlines()) == 6
    assert admin_writes(gw) == writes  # a second apply writes nothing
    assert run(capsys, gw, "diff", "-f", path)[:2] == (0, "no differences\n")

    # A changed file: one field updated, one model and the shadow left out; --prune deletes what is left out.
    smaller = write(tmp_path / "smaller.yaml", fleet(stack, capacity=3, models=(A, B)))
    code, out, _ = run(capsys, gw, "diff", "-f", smaller, "--prune")
    assert (
        code == 1
        and "backend/t0 would be updated" in out
        and '  capacity: {"memory_bytes": null, "models": 2} ->' in out
    )
    assert f"model/{C} would be deleted" in out
    code, out, _ = run(capsys, gw, "apply", "-f", smaller)  # without --prune, C stays
    assert code == 0 and "backend/t0 updated" in out and "route/front updated" in out and "deleted" not in out
    code, out, _ = run(capsys, gw, "apply", "-f", smaller, "--prune")
    assert code == 0 and out.splitlines()[-1] == f"model/{C} deleted"
    code, out, _ = run(capsys, gw, "get", "models", "-o", "json")
    assert [m["name"] for m in yaml.safe_load(out)["models"]] == [A, B]

    # Tables for people: aligned columns with copy states and last use, nothing cut short.
    with stack.admin(gw) as admin:
        admin.post(f"/admin/models/{A}/load").raise_for_status()
    code, out, _ = run(capsys, gw, "get", "models")
    header, *rows = out.splitlines()
    assert header.split() == [
        "NAME",
        "RUNTIME",
        "SOURCE",
        "COPIES",
        "PINNED",
        "STATE",
        "LAST",
        "USED",
        "LOADS",
        "ERROR",
    ]
    state_col = header.index("STATE")
    assert rows[0].startswith(A) and rows[0][state_col:].split()[0] in ("t0:ready", "t1:ready")
    assert rows[1][header.index("LAST USED") :].startswith("never")
    code, out, _ = run(capsys, gw, "get", "backends")
    assert code == 0 and stack.tritons[0].url in out and stack.tritons[1].url in out
    code, out, _ = run(capsys, gw, "get", "placement")
    assert code == 0 and any(line.split()[3:5] == [A, "ready"] for line in out.splitlines()[1:])


def test_get_all_yaml_restores_the_registry_into_an_empty_gateway(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    data = fleet(stack)
    data["models"].append({"name": "from-files", "runtime": "triton", "source": "file:///srv/models/x"})
    data["models"].append({"name": "many", "runtime": "triton", "max_copies": 2})
    data["routes"].append({"name": "hedged", "splits": [{"model": C, "weight": 1}], "hedge": {"after_ms": None}})
    assert run(capsys, gw, "apply", "-f", write(tmp_path / "f.yaml", data))[0] == 0
    code, backup, _ = run(capsys, gw, "get", "all", "-o", "yaml")
    assert code == 0
    (tmp_path / "backup.yaml").write_text(backup)

    fresh = stack.add_gateway(prefix=f"t{uuid.uuid4().hex[:8]}")
    code, out, _ = run(capsys, fresh, "apply", "-f", str(tmp_path / "backup.yaml"))
    assert code == 0 and out.count("created") == 9
    assert run(capsys, fresh, "get", "all", "-o", "yaml")[1] == backup
    code, as_json, _ = run(capsys, fresh, "get", "all", "-o", "json")
    assert yaml.safe_load(as_json) == yaml.safe_load(backup)


BAD = {
    "unknown field": (
        "models:\n  - {name: ok1, runtime: triton}\n  - name: bad\n    runtime: triton\n    colour: red\n",
        "f.yaml:5: models[1] (bad): unknown field(s) ['colour']",
    ),
    "wrong type": (
        "backends:\n  - id: b\n    kind: triton\n    url: http://127.0.0.1:1\n    capacity: {models: many}\n",
        "f.yaml:5: backends[0] (b): capacity.models must be an integer of at least 1, got 'many'",
    ),
    "unknown model in a split": (
        "models:\n  - {name: ok1, runtime: triton}\nroutes:\n  - {name: r, splits: [{model: nope, weight: 1}]}\n",
        "routes (r): names model(s) ['nope'] that are neither in the file nor registered",
    ),
    "duplicate names": (
        "models:\n  - {name: ok1, runtime: triton}\n  - {name: ok1, runtime: triton, pinned: true}\n",
        "f.yaml:3: models[1] (ok1): the model 'ok1' is declared more than once",
    ),
    "YAML syntax": ("models:\n  - {name: ok1, runtime: triton\n  - {name: ok2}\n", "f.yaml:3: not valid YAML"),
    "route named like a model": (
        "models:\n  - {name: ok1, runtime: triton}\nroutes:\n  - {name: ok1, splits: [{model: ok1, weight: 1}]}\n",
        "named both a model and a route",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_an_invalid_file_changes_nothing_and_says_where(
    kind: str, stack: LocalStack, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    text, message = BAD[kind]
    (tmp_path / "f.yaml").write_text(text)
    code, out, err = run(capsys, gw, "apply", "-f", str(tmp_path / "f.yaml"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert run(capsys, gw, "get", "all", "-o", "json")[1].split() == [
        "{",
        '"backends":',
        "[],",
        '"models":',
        "[],",
        '"routes":',
        "[]",
        "}",
    ]


def test_refusals_unreachable_gateway_and_wrong_token(
    stack: LocalStack, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    t0 = stack.tritons[0]
    backend = {"id": "t0", "kind": "triton", "url": t0.url, "capacity": {"models": 1, "memory_bytes": 100}}
    assert run(capsys, gw, "apply", "-f", write(tmp_path / "b.yaml", {"backends": [backend]}))[0] == 0
    # The gateway refuses (422, its own words); the bulk write is all or nothing.
    models = {"models": [{"name": A, "runtime": "triton"}, {"name": B, "runtime": "triton", "memory_bytes": 1000}]}
    code, _, err = run(capsys, gw, "apply", "-f", write(tmp_path / "m.yaml", models))
    assert code == 1 and "PUT /admin/models: 422:" in err and f"models[1] ({B})" in err and "largest" in err
    assert yaml.safe_load(run(capsys, gw, "get", "models", "-o", "json")[1])["models"] == []

    capsys.readouterr()
    code = ctl(["get", "models", "--url", gw.url, "--token", "wrong"])
    err = capsys.readouterr().err
    assert code == 1 and "refused the admin token (401)" in err and "MODELYARD_ADMIN_TOKEN" in err

    # Through the `modelyard` entry point, as a process: an address where nothing listens.
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "get", "backends", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("modelyard get: cannot reach the gateway at http://127.0.0.1:9")
    assert len(done.stderr.strip().splitlines()) == 1


def test_bulk_put_checks_every_model_before_writing_any(start_gateway: StartGateway) -> None:
    gw = start_gateway()
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as admin:
        bad = {"models": [{"name": A, "runtime": "triton"}, {"name": B, "runtime": "onnx"}]}
        r = admin.put("/admin/models", json=bad)
        assert r.status_code == 400 and r.json()["error"].startswith(f"models[1] ({B}): runtime")
        twice = {"models": [{"name": A, "runtime": "triton"}, {"name": A, "runtime": "triton"}]}
        assert admin.put("/admin/models", json=twice).status_code == 400
        assert admin.get("/admin/models").json()["models"] == []
        r = admin.put(
            "/admin/models", json={"models": [{"name": A, "runtime": "triton"}, {"name": B, "runtime": "triton"}]}
        )
        assert r.status_code == 200 and [m["name"] for m in r.json()["models"]] == [A, B]
        assert r.json()["models"][0]["copies"] == [] and r.json()["models"][0]["runtime"] == "triton"


def test_serve_config_applies_the_fleet_once_ready_and_refuses_a_bad_file(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "fleet.yaml", fleet(stack))
    gw = stack.add_gateway(prefix=f"t{uuid.uuid4().hex[:8]}", extra=[f"--config={path}"])
    try:
        with stack.admin(gw) as admin:
            eventually(lambda: len(admin.get("/admin/routes").json()["routes"]) == 1, "the fleet file applied", 30)
        assert "route/front created" in gw.log_tail()
        assert run(capsys, gw, "diff", "-f", path)[0] == 0
    finally:
        stack.stop_gateways()
    (tmp_path / "bad.yaml").write_text("models:\n  - {name: x, runtime: onnx}\n")
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--redis-url", stack.redis.url, "--admin-token=x"]
    done = subprocess.run(
        [*serve, f"--config={tmp_path / 'bad.yaml'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"modelyard: --config: {tmp_path / 'bad.yaml'}:2: models[0] (x): runtime is required and must be one of "
        "['triton', 'tfserving'], got 'onnx'"
    )
