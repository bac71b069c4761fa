"""docker-compose.yml read as Docker does: environments, dependencies, the ports each service listens on and
publishes, and the repository files it bind-mounts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.deploy.conftest import REPO
from tests.deploy.dockerfile import dockerfile_env, dockerfile_stages
from tests.deploy.serve_cli import SERVE_DEFAULTS, SERVE_FLAGS, as_list, check_serve_args, flag_value, port_of


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


def bind_mount_source(service: dict[str, Any], target: str) -> Path:
    """The repository file or folder mounted at `target` (or at the folder holding it)."""
    for volume in service.get("volumes") or []:
        source, container = str(volume).split(":")[:2]
        if source.startswith("./") and (target == container or target.startswith(container.rstrip("/") + "/")):
            return REPO / source[2:] / target[len(container) :].lstrip("/")
    raise AssertionError(f"nothing from the repository is mounted at {target}")
