"""The Grafana dashboard in deploy/grafana/ asks Prometheus only for metrics and labels that docs/metrics.md documents
(and tests/gateway/test_metrics_docs.py checks those against the gateway's registry)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.gateway.test_metrics_docs import DOC, documented

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "modelyard.json"
METRIC = re.compile(r"\b((?:modelyard|process)_[a-z_]+)\b")
SELECTOR = re.compile(r"\b((?:modelyard|process)_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r"\s*([a-zA-Z_]+)\s*(?:=~|!~|!=|=)\s*\"[^\"]*\"\s*,?")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every series


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, its variables' queries included."""
    data = dashboard()

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(data["panels"])
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            yield f"variable {var['name']}", query.removeprefix("label_values(").removesuffix(")")


def series_labels(name: str) -> set[str] | None:
    """Labels a series named `name` may carry, or None when no documented metric exposes it."""
    docs = documented()
    if name in docs:
        return set(docs[name][1])
    for suffix, extra in (("_bucket", {"le"}), ("_count", set()), ("_sum", set())):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and base in docs and docs[base][0] == "histogram":
            return set(docs[base][1]) | extra
    if name.startswith("process_") and f"`{name}`" in DOC.read_text():  # the standard process collector's
        return set()
    return None


def test_every_query_uses_documented_metrics_and_labels() -> None:
    found = list(expressions())
    assert len(found) >= 30
    for title, expr in found:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"{title}: {expr}"
        names = set(METRIC.findall(expr))
        assert names, f"{title}: no metric in {expr}"
        allowed = set(SCRAPE_LABELS)
        for name in names:
            labels = series_labels(name)
            assert labels is not None, f"{title}: {name} is not a documented metric"
            allowed |= labels
        for name, matchers in SELECTOR.findall(expr):
            used = set(MATCHER.findall(matchers))
            own = (series_labels(name) or set()) | SCRAPE_LABELS
            assert used <= own, f"{title}: {name} has no label(s) {used - own}"
        for grouping in GROUPING.findall(expr):
            used = {label.strip() for label in grouping.split(",") if label.strip()}
            assert used <= allowed, f"{title}: grouping by unknown label(s) {used - allowed} in {expr}"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    exprs = " ".join(expr for _, expr in expressions())
    for metric in (
        "modelyard_requests_total",  # traffic
        "modelyard_request_seconds_bucket",  # latency
        "modelyard_backend_request_seconds_bucket",
        "modelyard_placement_total",  # hit ratio
        "modelyard_loads_total",
        "modelyard_evictions_total",
        "modelyard_eviction_idle_seconds_bucket",  # thrashing
        "modelyard_hedges_total",
        "modelyard_backend_capacity_models",  # occupancy
        "modelyard_backend_models",
    ):
        assert metric in exprs, metric
    data = dashboard()
    assert data["uid"] == "modelyard" and not data["editable"]
    # Every panel queries the data source the compose stack provisions (uid "prometheus"), through the variable.
    sources = {json.dumps(p.get("datasource")) for p in data["panels"] if p["type"] != "row"}
    assert sources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}
    (ds,) = [v for v in data["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus" and ds["current"]["value"] == "prometheus"
