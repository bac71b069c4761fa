"""The gateway in front of TF Serving backends (the emulator in `tests.tfserving_emulator`, serving real
SavedModels), through `modelyard serve` processes sharing a real Redis; and one gateway with Triton and TF
Serving backends at once.

Capacity is checked from the backends' own point of view: a sampler asks every emulator's GetModelStatus
all through a test and keeps the most models that held memory at once; the emulators also refuse loads
beyond their `--max-models`, so an overrun would fail requests too.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from adapters.tfserving_proto.messages import (
    MODEL_SERVICE,
    model_status_request,
    model_status_response,
    reload_config_request,
)
from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.gateway.conftest import StartGateway, check_answer, infer_body
from tests.tfserving_models import build_broken_model, build_models, default_offset
from tests.tfserving_stack import TFServingEmulator

TFS_MODELS = [f"t{i:02d}" for i in range(8)]
CAPACITY = 3
HOLDING = {"START", "LOADING", "AVAILABLE", "UNLOADING"}


@pytest.fixture(scope="module")
def tfs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfs-models")
    build_models(root, TFS_MODELS)
    build_broken_model(root, "tbroken")
    return root


@pytest.fixture(scope="module")
def emulators(tfs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TFServingEmulator]]:
    logs = tmp_path_factory.mktemp("tfs-logs")
    ems = [
        TFServingEmulator(tfs_root, load_delay=0.3, max_models=CAPACITY, workdir=logs / f"emulator-{i}")
        for i in range(2)
    ]
    try:
        for em in ems:
            em.start()
        yield ems
    finally:
        for em in ems:
            em.stop()


@pytest.fixture
def tfs(emulators: list[TFServingEmulator]) -> Iterator[list[TFServingEmulator]]:
    """The emulators, emptied after the test (a reload with no models), as a new fleet would start."""
    yield emulators
    for em in emulators:
        with grpc.insecure_channel(em.grpc_url) as ch:
            ch.unary_unary(f"/{MODEL_SERVICE}/HandleReloadConfigRequest")(reload_config_request([]), timeout=30)
        deadline = time.monotonic() + 30
        while holding(em, [*TFS_MODELS, "tbroken"]):
            assert time.monotonic() < deadline, "emulator still holds models"
            time.sleep(0.05)


def loads(em: TFServingEmulator) -> list[str]:
    """Model names, one per real load the emulator did (SavedModel loads, logged by the emulator)."""
    return [line.split()[1] for line in em.load_log() if line.startswith("load ")]


def states(em: TFServingEmulator, name: str) -> list[str]:
    with grpc.insecure_channel(em.grpc_url) as ch:
        call = ch.unary_unary(f"/{MODEL_SERVICE}/GetModelStatus")
        try:
            raw = call(model_status_request(name), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
    return [v.state for v in model_status_response(raw)]


def holding(em: TFServingEmulator, names: list[str]) -> list[str]:
    return [n for n in names if set(states(em, n)) & HOLDING]


class Sampler:
    """Reads every emulator's GetModelStatus in a loop; keeps the most models held at once per backend and
    the states seen for one watched model.

    TF Serving has no call that lists every model at one instant: a pass asks model by model, so a model unloaded
    after its turn and another loaded before its own would both count in one pass (a busy machine made such a
    pass count 4 of 3 once, with every load accepted by the emulator's own limit). A model counts as held when two
    passes in a row saw it held; a real excess lasts at least a load (0.3 s here), longer than two passes.
    """

    def __init__(self, ems: list[TFServingEmulator], names: list[str], watch: str | None = None) -> None:
        self.ems, self.names, self.watch = ems, names, watch
        self.most = [0] * len(ems)
        self.samples = 0
        self.watched: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        channels = [grpc.insecure_channel(em.grpc_url) for em in self.ems]
        calls = [ch.unary_unary(f"/{MODEL_SERVICE}/GetModelStatus") for ch in channels]
        try:
            before: list[set[str]] = [set() for _ in calls]
            while not self._stop.is_set():
                for i, call in enumerate(calls):
                    held: set[str] = set()
                    for n in self.names:
                        try:
                            got = {v.state for v in model_status_response(call(model_status_request(n), timeout=5))}
                        except grpc.RpcError:
                            got = set()
                        if got & HOLDING:
                            held.add(n)
                        if n == self.watch and i == 0:
                            self.watched |= got or {"NOT_FOUND"}
                    self.most[i] = max(self.most[i], len(held & before[i]))
                    before[i] = held
                self.samples += 1
        finally:
            for ch in channels:
                ch.close()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def register_tfs(
    admin: httpx.Client, ems: list[TFServingEmulator], root: Path, models: list[str], capacity: int = CAPACITY
) -> None:
    for i, em in enumerate(ems):
        r = admin.put(
            f"/admin/backends/tfs-{i}",
            json={
                "kind": "tfserving",
                "url": em.rest_url,
                "grpc_url": em.grpc_url,
                "capacity": {"models": capacity},
                "model_base_path": str(root),
            },
        )
        assert r.status_code == 200, r.text
    for name in models:
        r = admin.put(f"/admin/models/{name}", json={"runtime": "tfserving"})
        assert r.status_code == 200, r.text


def predict(url: str, name: str, row: list[float]) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": [row]}, timeout=120)


def check_prediction(name: str, row: list[float], resp: httpx.Response) -> None:
    assert resp.status_code == 200, f"{name}: {resp.status_code} {resp.text}"
    pred = resp.json()["predictions"][0]
    assert pred["model"] == name, f"asked {name}, answered {pred['model']}"
    offset = default_offset(TFS_MODELS.index(name))
    assert pred["y"] == pytest.approx([v + offset for v in row])
    assert resp.headers["x-modelyard-model"] == name


def test_lru_overcommit_on_two_tfserving_backends(
    stack: LocalStack, start_gateway: StartGateway, tfs: list[TFServingEmulator], tfs_root: Path
) -> None:
    gw = start_gateway()
    with stack.admin(gw) as admin:
        register_tfs(admin, tfs, tfs_root, TFS_MODELS)
    before = [len(loads(em)) for em in tfs]
    row = [1.0, 2.0, 3.0, 4.0]
    with Sampler(tfs, TFS_MODELS) as sampler, ThreadPoolExecutor(16) as pool:
        # Phase 1: each model in turn, 12 requests at once while it is cold: one load per model.
        for name in TFS_MODELS:
            answers = list(pool.map(lambda _, n=name: predict(gw.url, n, row), range(12)))
            for resp in answers:
                check_prediction(name, row, resp)
        phase1 = Counter(n for em, b in zip(tfs, before, strict=True) for n in loads(em)[b:])
        # Phase 2: a skewed mix over all 8 models with room for 4: every answer from the model asked.
        rng = random.Random(7)
        names = rng.choices(TFS_MODELS, weights=[8, 6, 4, 3, 2, 1, 1, 1], k=120)
        answers = list(pool.map(lambda n: (n, predict(gw.url, n, row)), names))
    for name, resp in answers:
        check_prediction(name, row, resp)
    assert phase1 == Counter({n: 1 for n in TFS_MODELS}), phase1
    assert sampler.samples > 10
    assert max(sampler.most) <= CAPACITY, f"capacity exceeded: {sampler.most}"
    assert min(sampler.most) == CAPACITY  # both backends were used to the full
    for em in tfs:
        assert len(holding(em, TFS_MODELS)) <= CAPACITY


def test_two_gateways_loading_onto_one_tfserving_backend_at_the_same_moment(
    stack: LocalStack, start_gateway: StartGateway, tfs: list[TFServingEmulator], tfs_root: Path
) -> None:
    a, b = start_gateway(), start_gateway()
    with stack.admin(a) as admin:
        register_tfs(admin, tfs[:1], tfs_root, ["t00", "t01", "t02"])
    row = [0.5, 0.5, 0.5, 0.5]
    check_prediction("t00", row, predict(a.url, "t00", row))  # loaded first; must never be dropped
    before = len(loads(tfs[0]))
    with Sampler(tfs[:1], ["t00", "t01", "t02"], watch="t00") as sampler:
        for _ in range(3):
            barrier = threading.Barrier(2)

            def call(url: str, name: str, barrier: threading.Barrier = barrier) -> httpx.Response:
                barrier.wait()
                return predict(url, name, row)

            with ThreadPoolExecutor(2) as pool:
                fa = pool.submit(call, a.url, "t01")
                fb = pool.submit(call, b.url, "t02")
                check_prediction("t01", row, fa.result())
                check_prediction("t02", row, fb.result())
            # Both stay loaded side by side with t00; then both are unloaded again for the next round.
            assert sorted(holding(tfs[0], ["t00", "t01", "t02"])) == ["t00", "t01", "t02"]
            with stack.admin(a) as admin:
                for name in ("t01", "t02"):
                    assert admin.post(f"/admin/models/{name}/unload").status_code == 200
    assert sampler.watched == {"AVAILABLE"}, f"t00 left AVAILABLE: {sampler.watched}"
    assert Counter(loads(tfs[0])[before:]) == Counter({"t01": 3, "t02": 3})
    assert holding(tfs[0], ["t00", "t01", "t02"]) == ["t00"]


def test_stock_tfserving_rest_calls_through_the_gateway(
    stack: LocalStack, start_gateway: StartGateway, tfs: list[TFServingEmulator], tfs_root: Path
) -> None:
    gw = start_gateway()
    with stack.admin(gw) as admin:
        register_tfs(admin, tfs, tfs_root, ["t03"])
    offset = default_offset(3)
    # Row ("instances") form, unnamed single input: the answer is cold the first time.
    first = httpx.post(f"{gw.url}/v1/models/t03:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=60)
    assert first.status_code == 200, first.text
    assert first.json()["predictions"][0]["y"] == pytest.approx([1 + offset, 2 + offset, 3 + offset, 4 + offset])
    assert first.headers["x-modelyard-cold"] == "1" and first.headers["x-modelyard-backend"].startswith("tfs-")
    # Columnar ("inputs") form with a named input and an explicit signature, and a version in the path.
    body = {"signature_name": "serving_default", "inputs": {"x": [[0, 0, 0, 1], [1, 1, 1, 1]]}}
    second = httpx.post(f"{gw.url}/v1/models/t03/versions/1:predict", json=body, timeout=60)
    assert second.status_code == 200, second.text
    outputs = second.json()["outputs"]
    assert outputs["model"] == ["t03", "t03"] and outputs["y"][1] == pytest.approx([1 + offset] * 4)
    assert "x-modelyard-cold" not in second.headers
    # Raw bytes in, raw bytes out: the gateway never reformats a body.
    raw = b'{"instances": [[1.0, 1.0, 1.0, 1.0]]}'
    direct = httpx.post(f"{tfs[0].rest_url}/v1/models/t03:predict", content=raw, timeout=60)
    via = httpx.post(f"{gw.url}/v1/models/t03:predict", content=raw, timeout=60)
    if direct.status_code == 200:  # the copy may sit on the other emulator
        assert via.content == direct.content
    # Status and metadata, with and without a version.
    status = httpx.get(f"{gw.url}/v1/models/t03", timeout=30).json()
    assert [s["state"] for s in status["model_version_status"]] == ["AVAILABLE"]
    assert httpx.get(f"{gw.url}/v1/models/t03/versions/1", timeout=30).status_code == 200
    meta = httpx.get(f"{gw.url}/v1/models/t03/metadata", timeout=30).json()
    assert "serving_default" in json.dumps(meta)
    # Classify and regress over tf.Example inputs, in TF Serving's JSON form.
    examples = {"examples": [{"x": [1.0, 2.0, 3.0, 4.0]}]}
    reg = httpx.post(
        f"{gw.url}/v1/models/t03:regress", json={"signature_name": "tensorflow/serving/regress", **examples}
    )
    assert reg.status_code == 200, reg.text
    assert reg.json()["results"][0] == pytest.approx(10.0 + offset)
    cls = httpx.post(
        f"{gw.url}/v1/models/t03:classify", json={"signature_name": "tensorflow/serving/classify", **examples}
    )
    assert cls.status_code == 200, cls.text
    # A version the backend does not have is the backend's 404, passed through (not a retry, not a load).
    missing = httpx.post(f"{gw.url}/v1/models/t03/versions/7:predict", json={"instances": [[1, 2, 3, 4]]})
    assert missing.status_code == 404 and "error" in missing.json()
    # Errors of the gateway itself.
    assert httpx.post(f"{gw.url}/v1/models/nope:predict", json={}).status_code == 404
    assert httpx.post(f"{gw.url}/v1/models/t03:explain", json={}).status_code == 404
    bad = httpx.post(f"{gw.url}/v1/models/t03/labels/stable:predict", json={})
    assert bad.status_code == 400 and "labels" in bad.json()["error"]
    assert httpx.get(f"{gw.url}/v1/models/t03:predict").status_code == 400


def test_a_model_that_fails_to_load_on_tfserving_says_why_and_leaves_nothing_behind(
    stack: LocalStack, start_gateway: StartGateway, tfs: list[TFServingEmulator], tfs_root: Path
) -> None:
    gw = start_gateway()
    with stack.admin(gw) as admin:
        register_tfs(admin, tfs, tfs_root, ["tbroken", "t04"])
        resp = httpx.post(f"{gw.url}/v1/models/tbroken:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=60)
        assert resp.status_code == 503 and "failed to load" in resp.json()["error"], resp.text
        assert "retry-after" in resp.headers
        record = admin.get("/admin/models/tbroken").json()
        assert record["last_error"] and "tbroken" in record["last_error"], record
        assert all(c["state"] == "failed" for c in record["copies"]), record
    # The failed model is out of the backends' lists again, and other models still load beside it.
    for em in tfs:
        assert not holding(em, ["tbroken"])
    check_prediction("t04", [1.0] * 4, predict(gw.url, "t04", [1.0] * 4))


def test_one_gateway_with_triton_and_tfserving_backends(
    stack: LocalStack,
    start_gateway: StartGateway,
    tfs: list[TFServingEmulator],
    tfs_root: Path,
    new_loads: Callable[[], list[str]],
) -> None:
    gw = start_gateway()
    stack.register(capacity=2, models=["m005", "m006"])
    with stack.admin(gw) as admin:
        register_tfs(admin, tfs, tfs_root, ["t05", "t06"])
        for name in ("m005", "t05", "m006", "t06"):
            if name.startswith("m"):
                r = httpx.post(f"{gw.url}/v2/models/{name}/infer", json=infer_body([2.0]), timeout=60)
                assert r.status_code == 200, r.text
                check_answer(name, [2.0], r.json())
                assert r.headers["x-modelyard-backend"].startswith("triton-")
            else:
                r = predict(gw.url, name, [2.0] * 4)
                check_prediction(name, [2.0] * 4, r)
                assert r.headers["x-modelyard-backend"].startswith("tfs-")
        placement = admin.get("/admin/placement").json()["backends"]
    for bid, backend in placement.items():
        names = {m["name"] for m in backend["models"]}
        assert names <= ({"t05", "t06"} if bid.startswith("tfs-") else {"m005", "m006"}), (bid, names)
    assert sorted(new_loads()) == ["m005", "m006"]
    # A model called through the other runtime's API is a clear 400 that names the right path.
    wrong = httpx.post(f"{gw.url}/v2/models/t05/infer", json=infer_body([1.0]))
    assert wrong.status_code == 400 and "/v1/models/t05:predict" in wrong.json()["error"]
    wrong = predict(gw.url, "m005", [1.0] * 4)
    assert wrong.status_code == 400 and "/v2/models/m005/infer" in wrong.json()["error"]


# Run as the gateway's main module: serve, then on exit write which TensorFlow modules were ever imported.
_PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
def report():
    mods = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras"))
    with open(out, "w") as f:
        json.dump({"tensorflow_modules": mods, "grpc": "grpc" in sys.modules}, f)
atexit.register(report)
from gateway.cli import main
sys.argv[0] = "modelyard"
sys.exit(main())
"""


def test_the_gateway_process_never_imports_tensorflow(
    stack: LocalStack, tfs: list[TFServingEmulator], tfs_root: Path, tmp_path: Path
) -> None:
    report = tmp_path / "modules.json"
    gw = GatewayProcess(stack.redis.url, tmp_path, token=stack.token, prefix=f"notf{time.monotonic_ns()}")
    assert gw.args[1:4] == ["-m", "gateway.cli", "serve"]
    gw.args[1:3] = ["-c", _PROBE, str(report)]
    gw.start()
    try:
        with stack.admin(gw) as admin:
            register_tfs(admin, tfs, tfs_root, ["t07"])
        check_prediction("t07", [3.0] * 4, predict(gw.url, "t07", [3.0] * 4))
        assert httpx.get(f"{gw.url}/v1/models/t07/metadata", timeout=30).status_code == 200
    finally:
        assert gw.stop() == 0
    seen = json.loads(report.read_text())
    assert seen == {"tensorflow_modules": [], "grpc": True}


def test_probe_script_would_see_tensorflow(tmp_path: Path) -> None:
    """The check above can fail: the same probe code reports TensorFlow when it is imported."""
    report = tmp_path / "modules.json"
    code = _PROBE.replace(
        "from gateway.cli import main", "import tensorflow_serving.apis.predict_pb2\nmain = lambda: 0"
    )
    subprocess.run([sys.executable, "-c", code, str(report)], check=True, timeout=300)
    assert "tensorflow" in json.loads(report.read_text())["tensorflow_modules"]


def test_stock_tfserving_grpc_clients_work_unchanged_through_the_gateway(
    stack: LocalStack, start_gateway: StartGateway, tfs: list[TFServingEmulator], tfs_root: Path
) -> None:
    # The official client side, as users have it (this imports TensorFlow, in the test process only).
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        input_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    gw = start_gateway()
    with stack.admin(gw) as admin:
        register_tfs(admin, tfs, tfs_root, ["t06"])
    offset = default_offset(6)
    with grpc.insecure_channel(gw.grpc_url) as channel:
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "t06"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0, 4.0]], dtype=tf.float32))
        response, call = predictions.Predict.with_call(request, timeout=120)
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[1 + offset, 2 + offset, 3 + offset, 4 + offset]]
        assert tf.make_ndarray(response.outputs["model"]).tolist() == [b"t06"]
        meta = dict(call.initial_metadata())
        assert meta["x-modelyard-model"] == "t06" and meta["x-modelyard-cold"] == "1"
        assert meta["x-modelyard-backend"].startswith("tfs-")
        # Warm now, and with a version.
        request.model_spec.version.value = 1
        response, call = predictions.Predict.with_call(request, timeout=30)
        assert tf.make_ndarray(response.outputs["model"]).tolist() == [b"t06"]
        assert "x-modelyard-cold" not in dict(call.initial_metadata())

        status = models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "t06"}), timeout=30
        )
        assert [(v.version, v.state) for v in status.model_version_status] == [(1, 30)]  # AVAILABLE
        meta_req = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "t06"})
        meta_req.metadata_field.append("signature_def")
        assert "serving_default" in str(predictions.GetModelMetadata(meta_req, timeout=30))

        example = input_pb2.Input()
        ex = example.example_list.examples.add()
        ex.features.feature["x"].float_list.value.extend([1.0, 2.0, 3.0, 4.0])
        reg = predictions.Regress(
            regression_pb2.RegressionRequest(
                model_spec={"name": "t06", "signature_name": "tensorflow/serving/regress"}, input=example
            ),
            timeout=30,
        )
        assert reg.result.regressions[0].value == pytest.approx(10.0 + offset)
        cls = predictions.Classify(
            classification_pb2.ClassificationRequest(
                model_spec={"name": "t06", "signature_name": "tensorflow/serving/classify"}, input=example
            ),
            timeout=30,
        )
        assert len(cls.result.classifications[0].classes) == 4

        unknown = predict_pb2.PredictRequest()
        unknown.CopyFrom(request)
        unknown.model_spec.name = "never-registered"
        with pytest.raises(grpc.RpcError) as err:
            predictions.Predict(unknown, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "never-registered" in err.value.details()
        label = predict_pb2.PredictRequest()
        label.CopyFrom(request)
        label.model_spec.version_label = "stable"
        with pytest.raises(grpc.RpcError) as err:
            predictions.Predict(label, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "/admin/models" in err.value.details()
