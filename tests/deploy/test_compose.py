"""docker-compose.yml, checked offline against the docs, `modelyard serve` and the backends' own flags:
services, dependencies, health checks, ports (published on 127.0.0.1 only) and volumes.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.compose_file import (
    bind_mount_source,
    depends_on,
    environment,
    gateway_ports,
    listening_ports,
    published,
)
from tests.deploy.conftest import DEPLOY_DOC, REPO
from tests.deploy.serve_cli import as_list, check_serve_args, check_serve_env, flag_value, port_of

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
