"""Fleet files, plans, tables and the rollout client, without a gateway (the admin API on httpx.MockTransport).
The same commands against real gateways: tests/gateway/test_fleet_cli.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ctl import show
from gateway.ctl.client import AdminClient
from gateway.ctl.errors import CtlError
from gateway.ctl.fleet import Fleet, load_fleet
from gateway.ctl.main import build_parser
from gateway.ctl.plan import BULK, execute, hold_rollouts, make_plan
from gateway.ctl.rollout import run_rollout

TRITON = {"kind": "triton", "url": "http://127.0.0.1:8000/", "capacity": {"models": 4}}


def load(tmp_path: Path, text: str, name: str = "f.yaml") -> Fleet:
    (tmp_path / name).write_text(text)
    return load_fleet(str(tmp_path / name))


def error(tmp_path: Path, text: str, name: str = "f.yaml") -> str:
    with pytest.raises(CtlError) as info:
        load(tmp_path, text, name)
    assert info.value.code == 2
    return str(info.value).replace(str(tmp_path) + "/", "")


def test_entries_take_the_stored_form_named_by_id_or_name(tmp_path: Path) -> None:
    data = {"backends": [{"name": "b", **TRITON}], "models": [{"id": "m", "runtime": "triton"}], "routes": []}
    fleet = load(tmp_path, json.dumps(data), "f.json")
    assert fleet.backends["b"] == {
        "id": "b",
        "kind": "triton",
        "url": "http://127.0.0.1:8000",  # as the API stores it
        "grpc_url": None,
        "capacity": {"models": 4, "memory_bytes": None},
    }
    assert fleet.models["m"]["max_copies"] == 1 and fleet.models["m"]["name"] == "m"
    assert load(tmp_path, "").count() == 0  # an empty file is an empty fleet


def test_errors_name_the_entry_the_field_and_the_line(tmp_path: Path) -> None:
    text = "backends:\n  - id: b\n    kind: triton\n    url: http://h:1\n    capacity:\n      models: 0\n"
    assert error(tmp_path, text) == "f.yaml:5: backends[0] (b): capacity.models must be an integer of at least 1, got 0"
    assert error(tmp_path, "models:\n  - runtime: triton\n") == (
        "f.yaml:2: models[0]: every entry needs an id or name (a string)"
    )
    assert "id and name differ" in error(tmp_path, "models:\n  - {id: a, name: b, runtime: triton}\n")
    assert error(tmp_path, "- a\n") == "f.yaml: a fleet file is a mapping with backends, models and routes lists"
    assert "unknown section(s) ['model']" in error(tmp_path, "model: []\n")
    assert error(tmp_path, "models: {a: 1}\n") == "f.yaml: models must be a list of entries"
    assert error(tmp_path, '{"models": [}', "f.json").startswith("f.json: not valid JSON")
    twice = "models:\n  - name: a\n    runtime: triton\n    runtime: tfserving\n"
    assert error(tmp_path, twice) == "f.yaml:4: not valid YAML: 'runtime' is given twice in one entry"
    assert error(tmp_path, "models:\n  - 3\n").startswith("f.yaml:2: models[0]: an entry must be a mapping")
    assert "invalid model name 'a b'" in error(tmp_path, "models:\n  - {name: a b, runtime: triton}\n")
    with pytest.raises(CtlError, match="cannot read the fleet file"):
        load_fleet(str(tmp_path / "missing.yaml"))


def fleet(**kinds: dict[str, dict[str, Any]]) -> Fleet:
    return Fleet(**kinds)


def model(name: str, runtime: str = "triton", **extra: Any) -> dict[str, Any]:
    base = {"name": name, "runtime": runtime, "source": None, "memory_bytes": 0, "min_copies": 0}
    return {**base, "max_copies": 1, "pinned": False, "hedge": None, **extra}


def route(name: str, *models: str) -> dict[str, Any]:
    splits = [{"model": m, "weight": 1} for m in models]
    return {"name": name, "splits": splits, "shadows": [], "sticky_header": None, "hedge": None}


def test_plans_order_and_check_what_no_single_entry_shows() -> None:
    have = fleet(models={"a": model("a"), "b": model("b"), "old": model("old")}, routes={"r": route("r", "a")})
    want = fleet(models={"a": model("a"), "b": model("b", pinned=True), "c": model("c")}, routes={"r": route("r", "c")})
    plan = make_plan(want, have, prune=True, path="f")
    assert [a.line() for a in plan] == [
        "model/a unchanged",
        "model/b updated",
        "model/c created",
        "route/r updated",
        "model/old deleted",
    ]
    assert plan[1].field_changes() == ["  pinned: false -> true"]
    assert [a.verb for a in make_plan(want, have, prune=False, path="f")].count("deleted") == 0

    # Without --prune the gateway's own objects count; with it, only the file's.
    kept = fleet(models={"a": model("a")}, routes={"other": route("other", "a")})
    make_plan(fleet(models={"b": model("b")}), kept, prune=False, path="f")
    with pytest.raises(CtlError, match=r"f: routes \(other\): names model\(s\) \['a'\] that are neither") as info:
        make_plan(fleet(models={"b": model("b")}, routes={"other": route("other", "a")}), kept, True, "f")
    assert info.value.code == 2
    mixed = fleet(models={"a": model("a"), "t": model("t", "tfserving")}, routes={"r": route("r", "a", "t")})
    with pytest.raises(CtlError, match=r"routes \(r\): mixes runtimes \['tfserving', 'triton'\]"):
        make_plan(mixed, Fleet(), False, "f")
    with pytest.raises(CtlError, match="would be both a model and a route"):
        make_plan(fleet(routes={"a": route("a", "a")}), kept, False, "f")


def test_execute_writes_models_in_bulk_and_shows_progress() -> None:
    calls: list[tuple[str, str, int]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        calls.append((request.method, request.url.path, len(body["models"]) if body and "models" in body else 0))
        return httpx.Response(200, json={})

    n = BULK * 2 + 7
    want = fleet(models={f"m{i}": model(f"m{i}") for i in range(n)}, routes={"r": route("r", "m0")})
    have = fleet(models={"m0": model("m0")}, routes={"gone": route("gone", "m0")})
    client = AdminClient("http://gw", "t", transport=httpx.MockTransport(handle))
    out, err = io.StringIO(), io.StringIO()
    execute(client, make_plan(want, have, prune=True, path="f"), out, err)
    assert calls == [
        ("PUT", "/admin/models", BULK),
        ("PUT", "/admin/models", BULK),
        ("PUT", "/admin/models", n - 1 - 2 * BULK),
        ("PUT", "/admin/routes/r", 0),
        ("DELETE", "/admin/routes/gone", 0),
    ]
    lines = out.getvalue().splitlines()
    assert lines[0] == "model/m0 unchanged" and lines[-1] == "route/gone deleted" and len(lines) == n + 2
    assert err.getvalue().splitlines()[-1] == f"applying: {n + 1}/{n + 1} changes written"


def test_client_errors_are_one_line_with_the_apis_words() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/admin/models/x":
            return httpx.Response(422, json={"error": "model 'x' needs 9 bytes"})
        return httpx.Response(502, text="bad gateway\n")

    client = AdminClient("http://gw/", "t", transport=httpx.MockTransport(handle))
    with pytest.raises(CtlError) as info:
        client.call("PUT", "/admin/models/x", {})
    assert str(info.value) == "PUT /admin/models/x: 422: model 'x' needs 9 bytes" and info.value.code == 1
    with pytest.raises(CtlError, match="GET /admin/routes: 502: bad gateway"):
        client.call("GET", "/admin/routes")


def test_tables_align_and_cut_nothing() -> None:
    long_source = "s3://bucket/" + "deep/" * 30 + "model"
    records = [
        {"name": "a", "runtime": "triton", "source": long_source, "copies": [{"backend": "t0", "state": "ready"}],
         "last_used": 1000.0, "loads": 3},
        {"name": "bb", "runtime": "tfserving", "source": None, "copies": [], "last_used": None, "loads": 0,
         "pinned": True, "last_error": "failed: no such file"},
    ]  # fmt: skip
    header, first, second = show.models_table(records, now=1000.0 + 3700).splitlines()
    assert long_source in first
    assert header.index("STATE") == first.index("t0:ready") == second.index("-", header.index("STATE"))
    assert first[header.index("LAST USED") :].startswith("1h ago") and "never" in second
    assert second.endswith("failed: no such file")
    assert show.ago(90.0, now=100.0) == "10s ago" and show.ago(0, now=3 * 86400) == "3d ago"


def rollout(args: list[str], answer: dict[str, Any], status: int = 200) -> tuple[list[httpx.Request], str]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=answer)

    parsed = build_parser().parse_args(["rollout", *args])
    out = io.StringIO()
    client = AdminClient("http://gw", "t", transport=httpx.MockTransport(handle))
    import contextlib

    with contextlib.redirect_stdout(out):
        run_rollout(parsed, client)
    return seen, out.getvalue()


def test_rollout_commands_speak_the_contracts_rollout_api() -> None:
    # As the rollout API on the rollouts branch answers: `steps` the history, `spec.steps` the weights.
    state = {"route": "front", "model": "b", "phase": "step", "step": 1, "weight": 5, "reason": "",
             "steps": [{"phase": "step", "step": 0, "weight": 1}], "spec": {"steps": [1, 5, 25]}}  # fmt: skip
    seen, out = rollout(
        ["start", "front", "--model", "b", "--steps", "1,5,25", "--step-seconds", "30", "--max-p99-ratio", "1.2"],
        state,
    )
    assert (seen[0].method, seen[0].url.path) == ("PUT", "/admin/routes/front/rollout")
    assert json.loads(seen[0].content) == {
        "model": "b",
        "steps": [1, 5, 25],
        "step_seconds": 30.0,
        "gates": {"max_p99_ratio": 1.2},
    }
    assert out.strip() == "route front: b step, step 2 of 3 (1%, 5%, 25%), weight 5%"
    seen, out = rollout(["status", "front", "-o", "json"], state)
    assert (seen[0].method, json.loads(out)) == ("GET", state)
    promoted = {**state, "phase": "promoted", "weight": 100}
    seen, out = rollout(["promote", "front"], promoted)
    assert (seen[0].method, seen[0].url.path) == ("POST", "/admin/routes/front/rollout/promote")
    assert out.strip() == "route front: b promoted"
    aborted = {**state, "phase": "aborted", "reason": "aborted by an operator"}
    seen, out = rollout(["abort", "front"], aborted)
    assert seen[0].method == "DELETE" and out.strip() == "route front: b aborted (aborted by an operator)"
    with pytest.raises(CtlError, match="409: a rollout is already running"):
        rollout(["start", "front", "--model", "b"], {"error": "a rollout is already running"}, status=409)
    with pytest.raises(CtlError, match="--steps must be integers"):
        rollout(["start", "front", "--model", "b", "--steps", "1,x"], state)


def test_apply_holds_routes_whose_rollout_is_running() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/admin/routes/rolling/rollout":
            return httpx.Response(200, json={"route": "rolling", "model": "b", "phase": "step", "weight": 5})
        if request.url.path == "/admin/routes/done/rollout":
            return httpx.Response(200, json={"route": "done", "model": "b", "phase": "promoted"})
        return httpx.Response(404, json={"error": "no rollout"})

    client = AdminClient("http://gw", "t", transport=httpx.MockTransport(handle))
    have = fleet(routes={n: route(n, "a") for n in ("rolling", "done", "plain", "gone")})
    want = fleet(routes={n: route(n, "b") for n in ("rolling", "done", "plain")}, models={"b": model("b")})
    have.models = {"a": model("a")}
    plan = hold_rollouts(client, make_plan(want, have, prune=False, path="f"))
    assert [(a.name, a.verb) for a in plan if a.kind == "routes"] == [
        ("rolling", "held"),
        ("done", "updated"),
        ("plain", "updated"),
    ]
    assert plan[1].line().startswith("route/rolling held: a rollout is running on it")
    assert not plan[1].changes
