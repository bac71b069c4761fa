"""The deployment files, checked offline: no Docker engine, no cluster, nothing started.

docker-compose.yml, the Dockerfile, .dockerignore and deploy/kubernetes/ are parsed and cross-checked against
each other and against `modelyard serve` itself: the flags and MODELYARD_* variables they use are read from
`gateway.cli`'s argparse parser, not from a list kept here. The Kubernetes manifests are validated against the
Kubernetes JSON schemas shipped by `kubernetes-validate` (strict: unknown fields fail).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.cli import build_parser
from gateway.ctl.fleet import Fleet, load_fleet

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S_DIR = REPO / "deploy" / "kubernetes"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

# Kubernetes versions whose schemas the manifests must satisfy: an older one still common on managed clusters
# and a recent one.
K8S_VERSIONS = ("1.30.0", "1.34.0")

# What each service must publish (container side), as the issue asks.
EXPECTED_PUBLISHED = {
    "gateway": {8080, 8081},
    "triton-a": {8000, 8001, 8002},
    "triton-b": {8000, 8001, 8002},
    "tfserving": {8500, 8501},
    "minio": {9000},
    "prometheus": {9090},
    "grafana": {3000},
}

# Bind-mount sources that may be missing from a checkout: Docker creates them (empty) at `up`.
OPTIONAL_BIND_SOURCES = {"deploy/grafana"}


# ---------------------------------------------------------------------------------------------------------------
# `modelyard serve`, introspected


def _serve_parser() -> Any:
    # The parser reads MODELYARD_* from the environment for its defaults: build it without any.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        parser = build_parser()
    for action in parser._actions:
        if action.choices and "serve" in action.choices:
            return action.choices["serve"]
    raise AssertionError("gateway.cli has no `serve` subcommand")


SERVE = _serve_parser()
SERVE_FLAGS: dict[str, str] = {}  # flag -> env var
SERVE_DEFAULTS: dict[str, Any] = {}  # env var -> default
for _action in SERVE._actions:
    if not _action.option_strings or _action.dest == "help":
        continue
    _env = re.search(r"\[(MODELYARD_[A-Z0-9_]+)\]", _action.help or "")
    assert _env, f"serve flag {_action.option_strings} names no MODELYARD_* variable in its help"
    for _flag in _action.option_strings:
        SERVE_FLAGS[_flag] = _env.group(1)
    SERVE_DEFAULTS[_env.group(1)] = _action.default
SERVE_ENV = set(SERVE_FLAGS.values())


def test_the_serve_parser_was_introspected() -> None:
    # Guards the introspection itself: if gateway.cli changed shape, the checks below would pass vacuously.
    assert {"--host", "--http-port", "--grpc-port", "--redis-url", "--admin-token"} <= set(SERVE_FLAGS)
    assert SERVE_FLAGS["--http-port"] == "MODELYARD_HTTP_PORT"
    assert str(SERVE_DEFAULTS["MODELYARD_HTTP_PORT"]) == "8080"


def check_serve_args(args: list[str], where: str) -> None:
    """Every `--flag` in `args` is one `modelyard serve` accepts."""
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert flag in SERVE_FLAGS, f"{where}: `modelyard serve` has no flag {flag} (it has {sorted(SERVE_FLAGS)})"


def check_serve_env(names: list[str], where: str) -> None:
    for name in names:
        if name.startswith("MODELYARD_"):
            assert name in SERVE_ENV, f"{where}: `modelyard serve` reads no {name} (it reads {sorted(SERVE_ENV)})"


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `flag` in `args`, given as `--flag=value` or `--flag value`; None if absent."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def port_of(address: str) -> int:
    """`:9000`, `0.0.0.0:9000` or `9000` -> 9000."""
    return int(address.rsplit(":", 1)[-1])


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM" and stages[-1] and any(i == "FROM" for i, _ in stages[-1]):
            stages.append([])
        stages[-1].append((instruction, rest.strip()))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in stage:
        if instruction == "ENV":
            for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", rest):
                env[match.group(1)] = match.group(2)
    return env


def test_dockerfile_is_multi_stage_and_the_final_stage_has_no_compiler_or_pip_install() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile should build in one stage and run in another"
    final = stages[-1]
    for instruction, rest in final:
        if instruction == "RUN":
            assert "pip install" not in rest and "build-essential" not in rest and "gcc" not in rest, rest
    assert any(i == "COPY" and "--from=" in rest for i, rest in final), "the final stage copies the built venv"


def test_dockerfile_installs_the_package_without_extras() -> None:
    installs = [rest for stage in dockerfile_stages() for i, rest in stage if i == "RUN" and "pip install" in rest]
    assert installs, "the Dockerfile installs the package with pip"
    for rest in installs:
        command = rest.split("pip install", 1)[1].split("&&", 1)[0].split()
        targets = [word for word in command if not word.startswith("-")]
        assert targets == ["."], f"install the package itself, without extras (no dev, no local): {rest}"
        assert "[" not in rest.split("&&", 1)[0], f"no extras in the image: {rest}"


def test_dockerfile_runs_as_non_root_with_healthcheck_ports_and_entrypoint() -> None:
    final = dockerfile_stages()[-1]
    users = [rest for i, rest in final if i == "USER"]
    assert users, "the final stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the gateway must not run as root"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"

    healthchecks = [rest for i, rest in final if i == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1]
    assert "curl" not in healthchecks[-1] and "wget" not in healthchecks[-1], "slim has neither: use Python"

    exposed = {int(p.split("/")[0]) for i, rest in final if i == "EXPOSE" for p in rest.split()}
    assert exposed == {8080, 8081}
    env = dockerfile_env(final)
    check_serve_env(list(env), "Dockerfile ENV")
    assert env.get("MODELYARD_HOST") == "0.0.0.0", "inside a container the gateway must listen on every interface"
    assert {int(env["MODELYARD_HTTP_PORT"]), int(env["MODELYARD_GRPC_PORT"])} == exposed

    entrypoints = [rest for i, rest in final if i == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["modelyard", "serve"]


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore) as (negated, regex) in file order; the last matching rule decides."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negated, re.compile(regex)))
    return rules


def dockerignored(path: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a rule on a folder covers its contents
    ignored = False
    for negated, regex in dockerignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_venv_git_caches_and_tests_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/gateway.json",
        ".ruff_cache/content",
        ".localstack/x",
        "tests/conftest.py",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "modelyard.egg-info/PKG-INFO",
    ):
        assert dockerignored(path), f"{path} should stay out of the build context"


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    sources: list[str] = []
    for stage in dockerfile_stages():
        for instruction, rest in stage:
            if instruction == "COPY" and "--from=" not in rest:
                sources += rest.split()[:-1]
    assert sources
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for source in sources:
        source = source.rstrip("/")
        files = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert files, f"COPY {source}: nothing tracked there"
        for f in files:
            assert not dockerignored(f), f"COPY {source}: {f} is excluded by .dockerignore"


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def gateway_ports(service: dict[str, Any]) -> set[int]:
    """The ports a `modelyard serve` container listens on: its flags, else its environment, else the image's."""
    args = as_list(service.get("command"))
    check_serve_args(args, "gateway command")
    image_env = dockerfile_env(dockerfile_stages()[-1])
    ports = set()
    for flag in ("--http-port", "--grpc-port"):
        env = SERVE_FLAGS[flag]
        value = flag_value(args, flag) or environment(service).get(env) or image_env.get(env) or SERVE_DEFAULTS[env]
        ports.add(int(value))
    return ports


def listening_ports(name: str, service: dict[str, Any]) -> set[int]:
    """The container ports `service` listens on, read from the flags (or settings) it is started with."""
    image = str(service.get("image", ""))
    args = as_list(service.get("entrypoint")) + as_list(service.get("command"))
    if "build" in service and not service.get("entrypoint"):
        return gateway_ports(service)
    if "tritonserver" in image:
        return {
            int(flag_value(args, "--http-port") or 8000),
            int(flag_value(args, "--grpc-port") or 8001),
            int(flag_value(args, "--metrics-port") or 8002),
        }
    if image.startswith("tensorflow/serving"):
        ports = {int(flag_value(args, "--port") or 8500)}
        rest = int(flag_value(args, "--rest_api_port") or 0)  # 0: TF Serving's default, REST off
        return ports | ({rest} if rest else set())
    if image.startswith("minio/minio"):
        ports = {port_of(flag_value(args, "--address") or ":9000")}
        console = flag_value(args, "--console-address")
        return ports | ({port_of(console)} if console else set())
    if image.startswith("prom/prometheus"):
        return {port_of(flag_value(args, "--web.listen-address") or ":9090")}
    if image.startswith("grafana/grafana"):
        return {int(environment(service).get("GF_SERVER_HTTP_PORT", "3000"))}
    if image.startswith("redis"):
        return {int(flag_value(args, "--port") or 6379)}
    return set()


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each `ports` entry."""
    result = []
    for entry in service.get("ports") or []:
        assert isinstance(entry, str), f"use the short `ADDRESS:HOST:CONTAINER` syntax: {entry!r}"
        parts = entry.split("/")[0].split(":")
        assert len(parts) == 3, f"give the host address explicitly (127.0.0.1): {entry!r}"
        result.append((parts[0], int(parts[1]), int(parts[2])))
    return result


def documented_services() -> set[str]:
    """Service names in docs/deploy.md's table of compose services (the one whose header starts `| service |`)."""
    names: set[str] = set()
    in_table = False
    for line in DEPLOY_DOC.read_text().splitlines():
        if line.startswith("| service |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            match = re.match(r"\|\s*`([^`]+)`", line)
            if match:
                names.add(match.group(1))
    return names


def test_services_in_the_docs_exist_and_every_service_is_documented(services: dict[str, Any]) -> None:
    documented = documented_services()
    assert documented, "docs/deploy.md lists the compose services in a table starting `| service |`"
    assert documented == set(services), (
        f"only in the docs: {sorted(documented - set(services))}; undocumented: {sorted(set(services) - documented)}"
    )
    for name in re.findall(r"docker compose (?:logs|ps|wait|restart|stop)(?: -f)? ([a-z0-9-]+)", docs_text()):
        assert name in services, f"docs/deploy.md runs a command on a service that does not exist: {name}"


def docs_text() -> str:
    return DEPLOY_DOC.read_text() + (REPO / "README.md").read_text()


def test_depends_on_names_services_with_the_right_kind_of_condition(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on {dep}, which is no service"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                check = services[dep].get("healthcheck") or {}
                has_image_check = "build" in services[dep]  # the Dockerfile's HEALTHCHECK
                assert (check.get("test") or has_image_check) and not check.get("disable"), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no health check"
                )
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot job: restart 'no'"


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    one_shot = {d for s in services.values() for d, c in depends_on(s).items() if c == "service_completed_successfully"}
    one_shot |= {name for name, s in services.items() if s.get("restart") == "no"}  # jobs nothing waits for
    for name, service in services.items():
        if name not in one_shot:
            assert (service.get("healthcheck") or {}).get("test"), f"{name} has no health check"


def test_gateway_uses_only_real_serve_flags_and_variables(services: dict[str, Any]) -> None:
    gateway = services["gateway"]
    check_serve_args(as_list(gateway.get("command")), "compose gateway command")
    env = environment(gateway)
    check_serve_env(list(env), "compose gateway environment")
    assert env["MODELYARD_REDIS_URL"].startswith("redis://redis:"), "the gateways share the compose Redis"
    redis_port = port_of(urlsplit(env["MODELYARD_REDIS_URL"]).netloc)
    assert redis_port in listening_ports("redis", services["redis"])
    assert "MODELYARD_ADMIN_TOKEN" in env, "the admin token comes from the environment"
    assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000", "boto3 reaches MinIO through AWS_ENDPOINT_URL"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    check = " ".join(as_list(gateway["healthcheck"]["test"]))
    assert "/readyz" in check and f":{min(gateway_ports(gateway))}/" in check


def test_published_ports_agree_with_the_flags_and_bind_localhost(services: dict[str, Any]) -> None:
    host_ports: dict[int, str] = {}
    for name, service in services.items():
        listening = listening_ports(name, service)
        for address, host_port, container_port in published(service):
            assert address == "127.0.0.1", f"{name}: bind published ports to 127.0.0.1, not {address}"
            assert container_port in listening, f"{name} publishes {container_port} but listens on {listening}"
            assert host_port not in host_ports, f"host port {host_port}: {name} and {host_ports[host_port]}"
            host_ports[host_port] = name
    for name, expected in EXPECTED_PUBLISHED.items():
        assert name in services, f"no compose service {name}"
        assert listening_ports(name, services[name]) >= expected, f"{name} is not started on {expected}"
        assert {c for _, _, c in published(services[name])} >= expected, f"{name} does not publish {expected}"
    assert host_ports.get(8080) == "gateway" and host_ports.get(8081) == "gateway"


def test_backends_are_started_as_modelyard_needs_them(services: dict[str, Any]) -> None:
    tritons = [s for s in services.values() if "tritonserver" in str(s.get("image", ""))]
    assert len(tritons) == 2
    for service in tritons:
        assert "--model-control-mode=explicit" in as_list(service["command"])
    tfs = services["tfserving"]
    args = as_list(tfs.get("entrypoint")) + as_list(tfs.get("command"))
    assert flag_value(args, "--max_num_load_retries") == "0"
    assert flag_value(args, "--model_config_file_poll_wait_seconds") is None, "a re-read would undo the gateway's list"
    config = bind_mount_source(tfs, flag_value(args, "--model_config_file") or "")
    text = "\n".join(line for line in config.read_text().splitlines() if not line.strip().startswith("#"))
    assert re.fullmatch(r"\s*model_config_list\s*\{\s*\}\s*", text), f"{config} must list no model"
    monitoring = flag_value(args, "--monitoring_config_file")
    assert monitoring and bind_mount_source(tfs, monitoring).is_file()


def bind_mount_source(service: dict[str, Any], target: str) -> Path:
    """The repository file or folder mounted at `target` (or at the folder holding it)."""
    for volume in service.get("volumes") or []:
        source, container = str(volume).split(":")[:2]
        if source.startswith("./") and (target == container or target.startswith(container.rstrip("/") + "/")):
            return REPO / source[2:] / target[len(container) :].lstrip("/")
    raise AssertionError(f"nothing from the repository is mounted at {target}")


def test_volumes_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                if source[2:] not in OPTIONAL_BIND_SOURCES:
                    assert (REPO / source[2:]).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in named, f"{name} uses volume {source}, not declared under `volumes:`"


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


def test_prometheus_scrapes_services_that_exist(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    args = as_list(prometheus.get("command"))
    config_path = bind_mount_source(prometheus, flag_value(args, "--config.file") or "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"scrape job {job['job_name']}: {host} is no compose service"
                assert int(port) in listening_ports(host, services[host]), f"{target}: nothing listens there"
                scraped.add(host)
    assert {"gateway", "triton-a", "triton-b"} <= scraped
    gateway_job = next(j for j in config["scrape_configs"] if "gateway:8080" in j["static_configs"][0]["targets"])
    assert gateway_job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards_folder(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    provisioning = bind_mount_source(grafana, "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(datasources[0]["url"])
    assert url.hostname == "prometheus" and url.port in listening_ports("prometheus", services["prometheus"])
    providers = yaml.safe_load((provisioning / "dashboards" / "modelyard.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    assert mounts.get(path) == "./deploy/grafana", "the dashboards come from deploy/grafana/"


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]
    return docs


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_templates(manifests: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet"):
            yield m


def test_kustomization_lists_every_manifest_and_sets_the_namespace() -> None:
    data = kustomization()
    assert data["namespace"] == "modelyard"
    listed = set(data["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"not listed: {sorted(present - listed)}; missing: {sorted(listed - present)}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(manifests: list[dict[str, Any]], version: str) -> None:
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} ({version}): {where}: {exc.message}")


def test_namespace(manifests: list[dict[str, Any]]) -> None:
    assert find(manifests, "Namespace")["metadata"]["name"] == "modelyard"
    for m in manifests:
        assert m["metadata"].get("namespace", "modelyard") == "modelyard"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kubectl_kustomize_renders_valid_manifests_in_the_namespace() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(rendered) >= 10
    for m in rendered:
        if m["kind"] != "Namespace":
            assert m["metadata"]["namespace"] == "modelyard", f"{m['kind']}/{m['metadata']['name']}"
        kubernetes_validate.validate(m, K8S_VERSIONS[-1], strict=True)


def gateway_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def container_env(manifests: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as far as the manifests define it: ConfigMaps (envFrom) and literal env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(find(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env") or []:
        env[item["name"]] = item.get("value", f"<from {next(iter(item.get('valueFrom', {'?': 0})))}>")
    return env


def test_gateway_deployment(manifests: list[dict[str, Any]]) -> None:
    deployment = find(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod_labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], pod_labels)
    pod = spec["template"]["spec"]
    container = gateway_container(manifests)

    check_serve_args(as_list(container.get("args")), "Deployment args")
    assert not container.get("command"), "keep the image's entrypoint, `modelyard serve`"
    env = container_env(manifests, container)
    check_serve_env(list(env), "Deployment env")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(env["MODELYARD_HTTP_PORT"]), "grpc": int(env["MODELYARD_GRPC_PORT"])}
    assert ports == {"http": 8080, "grpc": 8081}
    assert env["MODELYARD_HOST"] == "0.0.0.0"

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return int(ports[port]) if isinstance(port, str) else int(port)

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(container["readinessProbe"]) == probe_port(container["livenessProbe"]) == ports["http"]

    grace = float(env.get("MODELYARD_SHUTDOWN_GRACE", SERVE_DEFAULTS["MODELYARD_SHUTDOWN_GRACE"]))
    assert pod["terminationGracePeriodSeconds"] > grace, "SIGKILL would cut the gateway's own shutdown grace"

    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = [rest for i, rest in dockerfile_stages()[-1] if i == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user, "the uid the image was built for"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"
    assert "cpu" in container["resources"]["requests"], "the HPA's CPU utilization needs a CPU request"
    assert "memory" in container["resources"]["limits"]

    anti = pod["affinity"]["podAntiAffinity"]
    terms = anti.get("preferredDuringSchedulingIgnoredDuringExecution", []) + anti.get(
        "requiredDuringSchedulingIgnoredDuringExecution", []
    )
    assert terms
    for term in terms:
        term = term.get("podAffinityTerm", term)
        assert matches(term["labelSelector"]["matchLabels"], pod_labels)


def test_admin_token_comes_from_a_secret_that_has_the_key(manifests: list[dict[str, Any]]) -> None:
    container = gateway_container(manifests)
    refs = [e for e in container["env"] if e["name"] == "MODELYARD_ADMIN_TOKEN"]
    assert len(refs) == 1 and "secretKeyRef" in refs[0]["valueFrom"]
    ref = refs[0]["valueFrom"]["secretKeyRef"]
    secret = find(manifests, "Secret", ref["name"])
    assert ref["key"] in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            present = any(
                m["kind"] == "Secret" and m["metadata"]["name"] == source["secretRef"]["name"] for m in manifests
            )
            assert present or source["secretRef"].get("optional") is True


def test_redis_url_points_at_the_redis_service(manifests: list[dict[str, Any]]) -> None:
    env = container_env(manifests, gateway_container(manifests))
    url = urlsplit(env["MODELYARD_REDIS_URL"])
    service = find(manifests, "Service", url.hostname)
    assert url.port in {p["port"] for p in service["spec"]["ports"]}


def test_services_select_their_pods_and_target_named_ports(manifests: list[dict[str, Any]]) -> None:
    for service in (m for m in manifests if m["kind"] == "Service"):
        selector = service["spec"]["selector"]
        selected = [
            w for w in pod_templates(manifests) if matches(selector, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        container_ports = {
            p.get("name"): p["containerPort"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in container_ports, f"Service {service['metadata']['name']}: no port named {target}"
            else:
                assert target in container_ports.values()
    gateway = find(manifests, "Service", "modelyard")
    assert {p["name"]: p["port"] for p in gateway["spec"]["ports"]} == {"http": 8080, "grpc": 8081}
    deployment = find(manifests, "Deployment")
    assert matches(gateway["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])


def test_pdb_and_hpa_target_the_gateway(manifests: list[dict[str, Any]]) -> None:
    deployment = find(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(manifests, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    hpa = find(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_triton_statefulset(manifests: list[dict[str, Any]]) -> None:
    triton = find(manifests, "StatefulSet", "triton")
    service = find(manifests, "Service", triton["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "a headless Service gives each Triton pod a stable name"
    container = triton["spec"]["template"]["spec"]["containers"][0]
    args = as_list(container.get("command")) + as_list(container.get("args"))
    assert "--model-control-mode=explicit" in args
    http_port = int(flag_value(args, "--http-port") or 8000)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == http_port
    assert ports["grpc"] == int(flag_value(args, "--grpc-port") or 8001)
    assert ports["metrics"] == int(flag_value(args, "--metrics-port") or 8002)
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/v2/health/live", "Triton's /v2/health/ready is 400 while models load"
        assert ports.get(get["port"], get["port"]) == http_port


def test_gateway_applies_a_fleet_file_of_the_triton_pods(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    container = gateway_container(manifests)
    config = Path(container_env(manifests, container)["MODELYARD_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    volume = next(
        v for v in find(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    text = find(manifests, "ConfigMap", volume["configMap"]["name"])["data"][config.name]
    (tmp_path / config.name).write_text(text)
    fleet = load_fleet(str(tmp_path / config.name))  # as `modelyard serve --config` checks it
    triton = find(manifests, "StatefulSet", "triton")
    pods = {f"triton-{i}.{triton['spec']['serviceName']}" for i in range(triton["spec"]["replicas"])}
    ports = {p["name"]: p["containerPort"] for p in triton["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {urlsplit(b["url"]).netloc for b in fleet.backends.values()} == {f"{p}:{ports['http']}" for p in pods}
    assert {b["grpc_url"] for b in fleet.backends.values()} == {f"{p}:{ports['grpc']}" for p in pods}


def test_kustomization_image_is_the_gateway_image(manifests: list[dict[str, Any]]) -> None:
    images = {i["name"] for i in kustomization().get("images", [])}
    image = gateway_container(manifests)["image"].split(":")[0]
    assert image in images, "`kustomize edit set image` must be able to point the gateway at your registry"
