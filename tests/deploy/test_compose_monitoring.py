"""The compose stack's monitoring: Prometheus scrapes services that exist, Grafana is provisioned."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.deploy.compose_file import bind_mount_source, listening_ports
from tests.deploy.serve_cli import as_list, flag_value


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
