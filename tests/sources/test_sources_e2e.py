"""Models from s3:// and file:// sources through real `modelyard serve` processes, real Triton and moto_server.

The model names here are not in the Tritons' own repository: an answer naming the model proves Triton loaded it
from the files the gateway sent with the load call.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import infer_body
from tests.sources.conftest import SourceGateway, folder_bytes, model_folder, register_backends
from tests.sources.s3server import MotoServer


def infer(gw: GatewayProcess, name: str, client: httpx.Client | None = None) -> httpx.Response:
    send = client.post if client is not None else httpx.post
    return send(f"{gw.url}/v2/models/{name}/infer", json=infer_body([1.0]), timeout=120)


def answer(resp: httpx.Response) -> tuple[str, float]:
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
    return outputs["MODEL_NAME"][0], outputs["OUTPUT0"][0]


def put_model(stack: LocalStack, name: str, source: str, **extra: Any) -> None:
    with stack.admin() as admin:
        admin.put(f"/admin/models/{name}", json={"runtime": "triton", "source": source, **extra}).raise_for_status()


def model_json(stack: LocalStack, name: str) -> dict[str, Any]:
    with stack.admin() as admin:
        resp = admin.get(f"/admin/models/{name}")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data


def metric(gw: GatewayProcess, name: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def load_attempts(gw: GatewayProcess, name: str) -> int:
    """Loads of `name` this gateway attempted that failed (its log has one line per failed attempt)."""
    return sum(1 for line in gw.log_path.read_text().splitlines() if f"load of {name} on " in line and "failed" in line)


def s3_model(moto: MotoServer, bucket: str, root: Path, name: str, offset: float, prefix: str, **kw: Any) -> str:
    """Write a model folder under `root`, push it to `bucket` under `prefix`; returns its s3:// URI."""
    moto.upload_dir(model_folder(root, name, offset, **kw), bucket, prefix)
    return f"s3://{bucket}/{prefix}"


def gateway_with_backends(stack: LocalStack, source_gateway: SourceGateway, *flags: str, **kw: Any) -> GatewayProcess:
    gw = source_gateway(*flags, **kw)
    register_backends(stack, 4)
    return gw


def triton_serves(stack: LocalStack, name: str) -> list[int]:
    return [i for i, t in enumerate(stack.tritons) if httpx.get(f"{t.url}/v2/models/{name}/ready").status_code == 200]


def test_an_s3_model_is_loaded_from_the_files_the_gateway_sends(
    stack: LocalStack, source_gateway: SourceGateway, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    uri = s3_model(moto, bucket, tmp_path / "src", "s3-alpha", 7.0, "prod/s3-alpha")
    gw = gateway_with_backends(stack, source_gateway)
    put_model(stack, "s3-alpha", uri)
    moto.reset_recording()
    resp = infer(gw, "s3-alpha")
    assert answer(resp) == ("s3-alpha", 8.0)
    assert resp.headers["x-modelyard-cold"] == "1"
    where = stack.tritons[int(resp.headers["x-modelyard-backend"].rsplit("-", 1)[1])]
    # Triton got it with the load call: its repository does not have it, its config names the source.
    assert "s3-alpha" not in {e.get("name") for e in httpx.post(f"{where.url}/v2/repository/index", json={}).json()}
    config = httpx.get(f"{where.url}/v2/models/s3-alpha/config").json()
    assert config["parameters"]["modelyard.source"] == {"string_value": uri}
    assert moto.count(bucket, "prod/s3-alpha/")["get"] == 3  # config.pbtxt, model.py, model.pyc
    assert answer(infer(gw, "s3-alpha")) == ("s3-alpha", 8.0)
    backend = resp.headers["x-modelyard-backend"]
    assert model_json(stack, "s3-alpha")["copies"] == [{"backend": backend, "state": "ready"}]


def test_a_file_model_is_loaded_likewise(stack: LocalStack, source_gateway: SourceGateway, tmp_path: Path) -> None:
    d = model_folder(tmp_path / "src", "file-beta", 3.0)
    gw = gateway_with_backends(stack, source_gateway)
    put_model(stack, "file-beta", f"file://{d}")
    assert answer(infer(gw, "file-beta")) == ("file-beta", 4.0)


def test_a_second_backend_loads_the_model_from_the_disk_cache(
    stack: LocalStack, source_gateway: SourceGateway, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    uri = s3_model(moto, bucket, tmp_path / "src", "s3-twice", 2.0, "twice")
    gw = gateway_with_backends(stack, source_gateway)
    put_model(stack, "s3-twice", uri, min_copies=2, max_copies=2)
    moto.reset_recording()
    with stack.admin(gw) as admin:
        admin.post("/admin/models/s3-twice/load").raise_for_status()
    assert [c["state"] for c in model_json(stack, "s3-twice")["copies"]] == ["ready", "ready"]
    assert triton_serves(stack, "s3-twice") == [0, 1]
    counts = moto.count(bucket, "twice/")
    assert counts["get"] == 3, f"downloaded more than once: {moto.requests()}"
    assert counts["list"] >= 2  # every load lists the source: that is how a changed source is noticed
    assert metric(gw, "modelyard_model_cache_hits_total") >= 1
    assert metric(gw, "modelyard_source_downloads_total") == 2  # config.pbtxt is read, not counted as a file


def test_the_disk_cache_stays_within_its_bound(
    stack: LocalStack, source_gateway: SourceGateway, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    names = [f"s3-many-{i}" for i in range(5)]
    uris = [s3_model(moto, bucket, tmp_path / "src", name, float(i), f"many/{name}") for i, name in enumerate(names)]
    size = folder_bytes(tmp_path / "src" / names[0])
    bound = int(size * 2.5)  # room for two models
    gw = gateway_with_backends(stack, source_gateway, "--model-cache-bytes", str(bound))
    for name, uri in zip(names, uris, strict=True):
        put_model(stack, name, uri)
    for i, name in enumerate(names):
        assert answer(infer(gw, name)) == (name, 1.0 + i)
        entries = tmp_path / "model-cache" / "entries"
        held = sum(p.stat().st_size for p in entries.rglob("*") if p.is_file() and p.name != "meta.json")
        assert held <= bound, f"the cache holds {held} bytes, over its bound of {bound}"
    assert len(list((tmp_path / "model-cache" / "entries").iterdir())) == 2
    assert metric(gw, "modelyard_model_cache_evictions_total") == 3


def test_refresh_swaps_to_a_new_version_under_traffic_without_a_failed_request(
    stack: LocalStack, source_gateway: SourceGateway, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    log = tmp_path / "swap-loads.log"
    uri = s3_model(moto, bucket, src, "s3-swap", 1.0, "swap", load_log=log)
    gw = gateway_with_backends(stack, source_gateway)
    put_model(stack, "s3-swap", uri)
    assert answer(infer(gw, "s3-swap")) == ("s3-swap", 2.0)

    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(3)]

    def hammer(out: list[tuple[int, str]]) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = infer(gw, "s3-swap", client)
                out.append((r.status_code, str(answer(r)[1]) if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=hammer, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        s3_model(moto, bucket, src, "s3-swap", 100.0, "swap", version=2, load_log=log)
        with stack.admin(gw) as admin:
            refreshed = admin.post("/admin/models/s3-swap/refresh")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["refresh_failed"] == {}
        assert len(refreshed.json()["refreshed_on"]) == 1
        assert answer(infer(gw, "s3-swap")) == ("s3-swap", 101.0)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    answers = [a for out in seen for a in out]
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
    for out in seen:  # each client saw the old version, then the new one, never back
        values = [v for _, v in out]
        assert values == sorted(values, key=lambda v: v == "101.0"), values
    assert {v for _, v in answers} <= {"2.0", "101.0"}
    # The same source again: the copy is current, Triton is not asked to load anything.
    loads = len(log.read_text().splitlines())
    with stack.admin(gw) as admin:
        assert admin.post("/admin/models/s3-swap/refresh").json()["refreshed_on"]
    assert len(log.read_text().splitlines()) == loads


def test_a_changed_source_is_picked_up_by_the_poll(
    stack: LocalStack, source_gateway: SourceGateway, tmp_path: Path
) -> None:
    d = model_folder(tmp_path / "src", "file-poll", 1.0)
    gw = gateway_with_backends(stack, source_gateway, "--source-poll-interval", "0.5")
    put_model(stack, "file-poll", f"file://{d}")
    assert answer(infer(gw, "file-poll")) == ("file-poll", 2.0)
    model_folder(tmp_path / "src", "file-poll", 50.0, version=2)
    deadline = time.monotonic() + 60
    while answer(infer(gw, "file-poll"))[1] != 51.0:
        assert time.monotonic() < deadline, "the poll did not pick up version 2"
        time.sleep(0.2)
    assert metric(gw, "modelyard_source_refreshes_total") >= 1


def expect_unavailable(gw: GatewayProcess, stack: LocalStack, name: str, reason: str) -> None:
    resp = infer(gw, name)
    assert resp.status_code == 503, resp.text
    assert "retry-after" in resp.headers
    assert reason in resp.json()["error"], resp.json()["error"]
    assert reason in (model_json(stack, name)["last_error"] or "")


def test_broken_sources_fail_their_loads_clearly_and_back_off(
    stack: LocalStack, source_gateway: SourceGateway, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    gw = gateway_with_backends(stack, source_gateway)
    nobucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    put_model(stack, "s3-nobucket", f"s3://{nobucket}/m")
    put_model(stack, "s3-noprefix", f"s3://{bucket}/missing/model")
    noconfig = model_folder(tmp_path / "src", "file-noconfig", 1.0)
    (noconfig / "config.pbtxt").unlink()
    put_model(stack, "file-noconfig", f"file://{noconfig}")
    put_model(stack, "file-nodir", f"file://{tmp_path}/not/there")

    moto.reset_recording()
    expect_unavailable(gw, stack, "s3-nobucket", f"bucket '{nobucket}' does not exist (S3 NoSuchBucket")
    expect_unavailable(gw, stack, "s3-noprefix", f"no objects under s3://{bucket}/missing/model/")
    expect_unavailable(gw, stack, "file-noconfig", "no config.pbtxt at its top level")
    expect_unavailable(gw, stack, "file-nodir", f"{tmp_path}/not/there does not exist on the gateway's host")

    # A burst during the backoff gets the same answer without touching the source again.
    burst = [infer(gw, "s3-nobucket") for _ in range(20)]
    assert {r.status_code for r in burst} == {503}
    assert all("does not exist (S3 NoSuchBucket" in r.json()["error"] for r in burst)
    attempts = load_attempts(gw, "s3-nobucket")
    assert 1 <= attempts < len(burst)
    assert moto.count(nobucket)["list"] == attempts  # one listing per attempt, none per request


def test_wrong_s3_credentials_fail_the_load_and_say_so(
    stack: LocalStack, source_gateway: SourceGateway, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    uri = s3_model(moto, bucket, tmp_path / "src", "s3-creds", 1.0, "creds")
    wrong = {"AWS_ACCESS_KEY_ID": "AKIAWRONGKEY0000", "AWS_SECRET_ACCESS_KEY": "wrong"}
    gw = gateway_with_backends(stack, source_gateway, env=wrong)
    put_model(stack, "s3-creds", uri)
    expect_unavailable(gw, stack, "s3-creds", "the store refused the gateway's AWS credentials")
    assert "InvalidAccessKeyId" in model_json(stack, "s3-creds")["last_error"]


def test_a_model_over_the_upload_bound_fails_with_its_size(
    stack: LocalStack, source_gateway: SourceGateway, tmp_path: Path
) -> None:
    d = model_folder(tmp_path / "src", "file-big", 1.0)
    (d / "1" / "weights.bin").write_bytes(b"\0" * 4096)
    gw = gateway_with_backends(stack, source_gateway, "--triton-upload-max-bytes", "4096")
    put_model(stack, "file-big", f"file://{d}")
    expect_unavailable(gw, stack, "file-big", "bytes, over the 4096 bytes a load may send to Triton")
