"""deploy/kubernetes/, checked offline: the manifests are validated against the Kubernetes JSON schemas shipped
by `kubernetes-validate` (strict: unknown fields fail) and cross-checked against each other, the Dockerfile
and `modelyard serve`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.ctl.fleet import load_fleet
from tests.deploy.conftest import K8S_DIR
from tests.deploy.dockerfile import dockerfile_stages
from tests.deploy.serve_cli import SERVE_DEFAULTS, as_list, check_serve_args, check_serve_env, flag_value

# Kubernetes versions whose schemas the manifests must satisfy: an older one still common on managed clusters
# and a recent one.
K8S_VERSIONS = ("1.30.0", "1.34.0")


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
