"""Tables for people: aligned columns, nothing cut short (long cells widen their column instead)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def ago(epoch: float | None, now: float | None = None) -> str:
    if epoch is None:
        return "never"
    seconds = max(0.0, (now if now is not None else time.time()) - float(epoch))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _or(value: Any, empty: str = "-") -> str:
    return empty if value is None or value == "" else str(value)


def backends_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for b in records:
        cap, used = b["capacity"], b.get("used") or {}
        mem = f"{_or(used.get('memory_bytes'), '0')}/{_or(cap.get('memory_bytes'), 'any')}"
        rows.append(
            [
                b["id"],
                b["kind"],
                b["url"],
                _or(b.get("grpc_url")),
                "yes" if b.get("healthy") else "NO",
                f"{used.get('models', 0)}/{cap['models']}",
                mem,
                ",".join(b.get("models") or []) or "-",
            ]
        )
    return table(["ID", "KIND", "URL", "GRPC", "HEALTHY", "MODELS", "BYTES", "READY"], rows)


def models_table(records: list[dict[str, Any]], now: float | None = None) -> str:
    rows = []
    for m in records:
        copies = ",".join(f"{c['backend']}:{c['state']}" for c in m.get("copies") or []) or "-"
        rows.append(
            [
                m["name"],
                m["runtime"],
                _or(m.get("source"), "repository"),
                f"{m.get('min_copies', 0)}..{m.get('max_copies', 1)}",
                "yes" if m.get("pinned") else "no",
                copies,
                ago(m.get("last_used"), now),
                str(m.get("loads", 0)),
                _or(m.get("last_error")),
            ]
        )
    return table(["NAME", "RUNTIME", "SOURCE", "COPIES", "PINNED", "STATE", "LAST USED", "LOADS", "ERROR"], rows)


def routes_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        hedge = r.get("hedge")
        after = _or(hedge.get("after_ms"), "p95") if hedge else ""
        rows.append(
            [
                r["name"],
                ",".join(f"{s['model']}:{s['weight']}" for s in r["splits"]),
                ",".join(f"{s['model']}:{s['percent']:g}%" for s in r.get("shadows") or []) or "-",
                _or(r.get("sticky_header")),
                f"after {after} ms, <={hedge['max_extra_percent']:g}%" if hedge else "-",
            ]
        )
    return table(["NAME", "SPLITS", "SHADOWS", "STICKY", "HEDGE"], rows)


def placement_table(placement: dict[str, Any], now: float | None = None) -> str:
    rows = []
    for bid, b in placement["backends"].items():
        header = [bid, "yes" if b.get("healthy") else "NO", f"{b['used']['models']}/{b['capacity']['models']}"]
        if not b["models"]:
            rows.append([*header, "-", "-", "-"])
        for m in b["models"]:  # most recently used first, as the API gives them
            rows.append([*header, m["name"], m["state"], ago(m.get("last_used"), now)])
    return table(["BACKEND", "HEALTHY", "USED", "MODEL", "STATE", "LAST USED"], rows)
