"""docs/metrics.md documents every metric the gateway exposes, with its type and labels, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import redis.asyncio as aioredis

from gateway.app import Gateway
from gateway.metrics import Family
from gateway.settings import Settings
from placement.records import BackendRecord, BackendSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(modelyard_[a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", re.M)
# prometheus_client's names a family and its samples: counters expose `<name>_total`.
EXPOSED = {"counter": "{}_total", "gauge": "{}", "histogram": "{}", "unknown": "{}"}


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """metric name as exposed -> (type, labels), from the tables of docs/metrics.md."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for name, kind, labels in ROW.findall(DOC.read_text()):
        assert name not in out, f"{name} is documented twice"
        out[name] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return out


def exposed() -> dict[str, tuple[str, frozenset[str]]]:
    """The same, from a gateway's registry: its metrics and what it reads at scrape time (one backend known)."""
    gateway = Gateway(Settings(), aioredis.from_url("redis://127.0.0.1:1"))  # no I/O before start()
    capacity = {"models": 1, "memory_bytes": 1 << 30}
    spec = BackendSpec.parse("b1", {"kind": "triton", "url": "http://127.0.0.1:1", "capacity": capacity})
    gateway.placer.view.backends["b1"] = BackendRecord(spec)
    gateway.store.calls["evalsha"] = 1
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for value in vars(gateway.metrics).values():
        metric = value.metric if isinstance(value, Family) else value
        if hasattr(metric, "_labelnames"):
            kind = metric._type
            out[EXPOSED[kind].format(metric._name)] = (kind, frozenset(metric._labelnames))
    for family in [*gateway._placement_metrics(), *gateway._source_metrics()]:
        labels = frozenset(k for s in family.samples for k in s.labels)
        out[EXPOSED[family.type].format(family.name)] = (family.type, labels)
    return out


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    docs, registry = documented(), exposed()
    assert sorted(set(registry) - set(docs)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(docs) - set(registry)) == [], "in docs/metrics.md but not exposed"
    wrong = {name: (docs[name], registry[name]) for name in docs if docs[name] != registry[name]}
    assert wrong == {}, "documented (type, labels) vs exposed"
