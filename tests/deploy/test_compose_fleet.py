"""The fleet file the compose gateway applies at start: its backends are compose services and its models exist
where their sources say.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from gateway.ctl.fleet import Fleet, load_fleet
from tests.deploy.compose_file import bind_mount_source, environment, listening_ports
from tests.deploy.conftest import REPO
from tests.deploy.serve_cli import as_list


def compose_fleet(services: dict[str, Any]) -> Fleet:
    """The fleet file the compose gateway applies at start (MODELYARD_CONFIG, bind-mounted from the repository)."""
    gateway = services["gateway"]
    return load_fleet(str(bind_mount_source(gateway, environment(gateway)["MODELYARD_CONFIG"])))


def test_the_gateways_fleet_file_targets_compose_services(services: dict[str, Any]) -> None:
    fleet = compose_fleet(services)  # also checks the file as `modelyard serve --config` will
    for backend_id, backend in fleet.backends.items():
        for address in (backend["url"], "grpc://" + backend["grpc_url"]):
            parts = urlsplit(address)
            assert parts.hostname in services, f"backend {backend_id}: {parts.hostname} is no compose service"
            host = services[parts.hostname]
            assert parts.port in listening_ports(parts.hostname, host), f"backend {backend_id}: {address}"
        image = str(services[urlsplit(backend["url"]).hostname or ""]["image"])
        expected_image = {"triton": "tritonserver", "tfserving": "tensorflow/serving"}[backend["kind"]]
        assert expected_image in image, f"backend {backend_id} is a {backend['kind']}, but its service runs {image}"
    assert {b["kind"] for b in fleet.backends.values()} == {"triton", "tfserving"}


def test_the_fleets_models_exist_where_their_sources_say(services: dict[str, Any]) -> None:
    fleet = compose_fleet(services)
    init = services["minio-init"]
    seed = bind_mount_source(init, "/seed")
    init_script = " ".join(as_list(init.get("command")))
    runtimes = {b["kind"] for b in fleet.backends.values()}
    tfs_models = {name for name, m in fleet.models.items() if m["runtime"] == "tfserving"}
    for name, model in fleet.models.items():
        assert model["runtime"] in runtimes, f"model {name}: no backend of runtime {model['runtime']}"
        source = model["source"]
        if source is not None:
            parts = urlsplit(source)
            assert parts.scheme == "s3", f"model {name}: compose models come from MinIO, not {source}"
            assert f"local/{parts.netloc}" in init_script, f"minio-init does not create bucket {parts.netloc}"
            folder = seed / parts.path.lstrip("/")
            assert (folder / "config.pbtxt").is_file(), f"model {name}: nothing at {folder}"
            assert f'name: "{name}"' in (folder / "config.pbtxt").read_text()
    # TF Serving's models (source null) are generated into the volume mounted at the backend's model_base_path.
    maker = load_module(REPO / "deploy" / "compose" / "tfserving" / "make_example_model.py")
    assert tfs_models == {maker.MODEL_NAME}
    job = services["tfs-example-model"]
    volume = next(str(v).split(":")[0] for v in job["volumes"] if str(v).split(":")[1] == as_list(job["command"])[-1])
    base_path = next(b["model_base_path"] for b in fleet.backends.values() if b["kind"] == "tfserving")
    assert f"{volume}:{base_path}:ro" in services["tfserving"]["volumes"]


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
