"""What the gateway says during the demo: loads and evictions from /metrics, occupancy from /admin/placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class GatewayState:
    loads: float | None = None
    evictions: float | None = None
    # backend id -> (models holding a slot, capacity in models, names of ready models)
    backends: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed by name with labels, as written."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples


def metric_total(samples: dict[str, float], name: str, *labels: str) -> float:
    """The sum of `name`'s samples over every label set that has all of `labels` (`key="value"`)."""
    return sum(
        v
        for key, v in samples.items()
        if (key == name or key.startswith(name + "{")) and all(label in key for label in labels)
    )


def read_gateway(admin: httpx.Client) -> GatewayState:
    state = GatewayState()
    try:
        metrics = parse_metrics(admin.get("/metrics").text)
        state.loads = metric_total(metrics, "modelyard_loads_total", 'result="ok"')
        state.evictions = metric_total(metrics, "modelyard_evictions_total")
    except httpx.HTTPError:
        pass
    try:
        r = admin.get("/admin/placement")
        r.raise_for_status()
        backends: dict[str, Any] = r.json()["backends"]
        for bid, b in sorted(backends.items()):
            ready = [m["name"] for m in b["models"] if m["state"] == "ready"]
            state.backends[bid] = (int(b["used"]["models"]), int(b["capacity"]["models"]), ready)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return state


def fmt_count(value: float | None) -> str:
    return "?" if value is None else str(int(value))
