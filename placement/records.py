"""Records of the registry: backends, models and the copies of models on backends.

These are plain values. They are stored in Redis by `placement.store` and mirrored in each gateway's
`placement.view.PlacementView`. Validation of what users send lives here too, so that the admin API and any
other front end refuse the same things with the same words.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from placement.errors import InvalidSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RUNTIMES = ("triton", "tfserving")
DEFAULT_TFSERVING_BASE_PATH = "/models"
DEFAULT_HEDGE_EXTRA_PERCENT = 5.0
# Request headers a route may stick users by: lower-case HTTP header / gRPC metadata names.
HEADER_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a valid backend, model or route name; raise InvalidSpec otherwise."""
    if not NAME_RE.match(name):
        raise InvalidSpec(
            f"invalid {kind} name {name!r}: names must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}$ "
            "(start with a letter or digit; then letters, digits, '_', '.', '-'; at most 128 characters)"
        )
    return name


class CopyState(enum.StrEnum):
    """The life of one copy of a model on one backend.

    loading -> ready -> unloading -> (gone); loading -> failed. A copy in loading, ready or unloading holds a
    slot of its backend's capacity; a failed copy holds none and only keeps the backend's reason.
    """

    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"

    @property
    def holds_slot(self) -> bool:
        return self is not CopyState.FAILED


@dataclass(frozen=True, slots=True)
class Capacity:
    models: int
    memory_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"models": self.models, "memory_bytes": self.memory_bytes}


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """What an operator registers with `PUT /admin/backends/{id}`."""

    id: str
    kind: str
    url: str
    grpc_url: str | None
    capacity: Capacity
    # TF Serving only: where the server finds a model registered without a `source`, as `{model_base_path}/{name}`
    # (a path or URI the server itself reads; /models is the tensorflow/serving image's convention).
    model_base_path: str | None = None

    @staticmethod
    def parse(backend_id: str, body: Any) -> BackendSpec:
        check_name("backend", backend_id)
        if not isinstance(body, dict):
            raise InvalidSpec("the body must be a JSON object with kind, url and capacity")
        unknown = set(body) - {"kind", "url", "grpc_url", "capacity", "model_base_path", "id"}
        if unknown:
            raise InvalidSpec(
                f"unknown field(s) {sorted(unknown)}; expected kind, url, grpc_url, capacity, model_base_path"
            )
        kind = body.get("kind")
        if kind not in RUNTIMES:
            raise InvalidSpec(f"kind must be one of {list(RUNTIMES)}, got {kind!r}")
        url = body.get("url")
        if not isinstance(url, str) or not _is_http_url(url):
            raise InvalidSpec(f"url must be an http(s) URL like http://host:port, got {url!r}")
        grpc_url = body.get("grpc_url")
        if grpc_url is not None and (not isinstance(grpc_url, str) or not _is_host_port(grpc_url)):
            raise InvalidSpec(f"grpc_url must be host:port, got {grpc_url!r}")
        if kind == "tfserving" and grpc_url is None:
            raise InvalidSpec("grpc_url is required for a tfserving backend: its model control is gRPC")
        cap = body.get("capacity")
        if not isinstance(cap, dict):
            raise InvalidSpec('capacity is required, e.g. {"models": 8, "memory_bytes": 8000000000}')
        models = cap.get("models")
        if not isinstance(models, int) or isinstance(models, bool) or models < 1:
            raise InvalidSpec(f"capacity.models must be an integer of at least 1, got {models!r}")
        mem = cap.get("memory_bytes")
        if mem is not None and (not _is_int(mem) or mem < 1):
            raise InvalidSpec(f"capacity.memory_bytes must be a positive integer or null, got {mem!r}")
        base = body.get("model_base_path")
        if base is not None:
            if kind != "tfserving":
                raise InvalidSpec("model_base_path is for tfserving backends (Triton has its own model repository)")
            if not isinstance(base, str) or not _is_base_path(base):
                raise InvalidSpec(
                    f"model_base_path must be an absolute path or a URI such as s3://bucket/models, got {base!r}"
                )
            base = base.rstrip("/") or "/"
        elif kind == "tfserving":
            base = DEFAULT_TFSERVING_BASE_PATH
        return BackendSpec(backend_id, kind, url.rstrip("/"), grpc_url, Capacity(models, mem), base)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "url": self.url,
            "grpc_url": self.grpc_url,
            "capacity": self.capacity.to_json(),
            **({"model_base_path": self.model_base_path} if self.model_base_path is not None else {}),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> BackendSpec:
        cap = data["capacity"]
        return BackendSpec(
            data["id"],
            data["kind"],
            data["url"],
            data.get("grpc_url"),
            Capacity(int(cap["models"]), cap.get("memory_bytes")),
            data.get("model_base_path"),
        )


@dataclass(frozen=True, slots=True)
class BackendRecord:
    spec: BackendSpec
    healthy: bool = True
    draining: bool = False

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """When to send a second copy of a slow request to another copy of the model, and how often at most.

    `after_ms` None: after the model's recently observed p95 latency (as this gateway measures it).
    `max_extra_percent`: hedges may add at most this share of the requests under the policy (a sliding window).
    """

    after_ms: float | None = None
    max_extra_percent: float = DEFAULT_HEDGE_EXTRA_PERCENT

    @staticmethod
    def parse(body: Any, where: str = "hedge") -> HedgePolicy | None:
        if body is None:
            return None
        if not isinstance(body, dict):
            raise InvalidSpec(f'{where} must be null or an object like {{"after_ms": 50, "max_extra_percent": 5}}')
        unknown = set(body) - {"after_ms", "max_extra_percent"}
        if unknown:
            raise InvalidSpec(f"unknown field(s) {sorted(unknown)} in {where}; expected after_ms, max_extra_percent")
        after = body.get("after_ms")
        if after is not None and (not _is_number(after) or after <= 0):
            raise InvalidSpec(
                f"{where}.after_ms must be a positive number of milliseconds, or null to hedge after the model's "
                f"observed p95 latency; got {after!r}"
            )
        extra = body.get("max_extra_percent", DEFAULT_HEDGE_EXTRA_PERCENT)
        if not _is_number(extra) or not 0 <= extra <= 100:
            raise InvalidSpec(f"{where}.max_extra_percent must be a number from 0 to 100, got {extra!r}")
        return HedgePolicy(None if after is None else float(after), float(extra))

    def to_json(self) -> dict[str, Any]:
        return {"after_ms": self.after_ms, "max_extra_percent": self.max_extra_percent}

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> HedgePolicy | None:
        if data is None:
            return None
        after = data.get("after_ms")
        return HedgePolicy(
            None if after is None else float(after),
            float(data.get("max_extra_percent", DEFAULT_HEDGE_EXTRA_PERCENT)),
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What an operator registers with `PUT /admin/models/{name}`."""

    name: str
    runtime: str
    source: str | None = None
    memory_bytes: int = 0
    min_copies: int = 0
    max_copies: int = 1
    pinned: bool = False
    # An extension of the contract: a model called by its own name can be hedged too (routes have their own).
    hedge: HedgePolicy | None = None

    @staticmethod
    def parse(name: str, body: Any) -> ModelSpec:
        check_name("model", name)
        if not isinstance(body, dict):
            raise InvalidSpec('the body must be a JSON object, at least {"runtime": "triton"}')
        allowed = {"runtime", "source", "memory_bytes", "min_copies", "max_copies", "pinned", "hedge", "name"}
        unknown = set(body) - allowed
        if unknown:
            raise InvalidSpec(f"unknown field(s) {sorted(unknown)}; expected {sorted(allowed - {'name'})}")
        runtime = body.get("runtime")
        if runtime not in RUNTIMES:
            raise InvalidSpec(f"runtime is required and must be one of {list(RUNTIMES)}, got {runtime!r}")
        source = body.get("source")
        if source is not None:
            if not isinstance(source, str) or not (
                (source.startswith("file:///") and len(source) > 8) or _is_s3(source)
            ):
                raise InvalidSpec(f"source must be null, file:///abs/dir or s3://bucket/prefix, got {source!r}")
        mem = body.get("memory_bytes", 0)
        if mem is None:
            mem = 0
        if not _is_int(mem) or mem < 0:
            raise InvalidSpec(f"memory_bytes must be a non-negative integer, got {mem!r}")
        min_copies = body.get("min_copies", 0)
        max_copies = body.get("max_copies", 1)
        if not _is_int(min_copies) or min_copies < 0:
            raise InvalidSpec(f"min_copies must be a non-negative integer, got {min_copies!r}")
        if not _is_int(max_copies) or max_copies < 1:
            raise InvalidSpec(f"max_copies must be an integer of at least 1, got {max_copies!r}")
        if min_copies > max_copies:
            raise InvalidSpec(f"min_copies ({min_copies}) cannot exceed max_copies ({max_copies})")
        pinned = body.get("pinned", False)
        if not isinstance(pinned, bool):
            raise InvalidSpec(f"pinned must be true or false, got {pinned!r}")
        hedge = HedgePolicy.parse(body.get("hedge"))
        return ModelSpec(name, runtime, source, mem, min_copies, max_copies, pinned, hedge)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "source": self.source,
            "memory_bytes": self.memory_bytes,
            "min_copies": self.min_copies,
            "max_copies": self.max_copies,
            "pinned": self.pinned,
            "hedge": self.hedge.to_json() if self.hedge else None,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> ModelSpec:
        return ModelSpec(
            data["name"],
            data["runtime"],
            data.get("source"),
            int(data.get("memory_bytes") or 0),
            int(data.get("min_copies", 0)),
            int(data.get("max_copies", 1)),
            bool(data.get("pinned", False)),
            HedgePolicy.from_json(data.get("hedge")),
        )


@dataclass(frozen=True, slots=True)
class CopyRecord:
    """One copy of a model on one backend, as Redis holds it."""

    model: str
    backend: str
    state: CopyState
    token: int = 0
    memory_bytes: int = 0
    since: float = 0.0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "state": self.state.value}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(slots=True)
class ModelStatus:
    """A model's record as the admin API shows it: its spec plus what happened to it."""

    spec: ModelSpec
    copies: list[CopyRecord] = field(default_factory=list)
    last_used: float | None = None
    loads: int = 0
    failures: int = 0
    last_error: str | None = None
    retry_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = self.spec.to_json()
        out["copies"] = [c.to_json() for c in self.copies]
        out["last_used"] = self.last_used
        out["loads"] = self.loads
        out["last_error"] = self.last_error
        return out


@dataclass(frozen=True, slots=True)
class Split:
    model: str
    weight: int


@dataclass(frozen=True, slots=True)
class Shadow:
    model: str
    percent: float


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A name clients call that the gateway resolves to one of several models (`PUT /admin/routes/{name}`).

    `splits` share the route's requests by weight; `shadows` each get a copy of `percent` of them, whose answers
    are compared and dropped; `sticky_header` keeps one header value on one model; `hedge` applies to whichever
    model answers. Whether the models named are registered is checked by the store, atomically with the write.
    """

    name: str
    splits: tuple[Split, ...]
    shadows: tuple[Shadow, ...] = ()
    sticky_header: str | None = None
    hedge: HedgePolicy | None = None

    @property
    def models(self) -> list[str]:
        """Every model the route names, splits first, each once."""
        return list(dict.fromkeys([s.model for s in self.splits] + [s.model for s in self.shadows]))

    @staticmethod
    def parse(name: str, body: Any) -> RouteSpec:
        check_name("route", name)
        example = '{"splits": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}]}'
        if not isinstance(body, dict):
            raise InvalidSpec(f"the body must be a JSON object, at least {example}")
        allowed = {"splits", "shadows", "sticky_header", "hedge", "name"}
        unknown = set(body) - allowed
        if unknown:
            raise InvalidSpec(f"unknown field(s) {sorted(unknown)}; expected {sorted(allowed - {'name'})}")
        raw_splits = body.get("splits")
        if not isinstance(raw_splits, list) or not raw_splits:
            raise InvalidSpec(f"splits is required: a non-empty list like {example}")
        splits: list[Split] = []
        for i, item in enumerate(raw_splits):
            if not isinstance(item, dict) or set(item) - {"model", "weight"} or "model" not in item:
                raise InvalidSpec(f'splits[{i}] must be {{"model": name, "weight": integer}}, got {item!r}')
            weight: Any = item.get("weight")
            if not _is_int(weight) or weight < 0:
                raise InvalidSpec(f"splits[{i}].weight must be a non-negative integer, got {weight!r}")
            splits.append(Split(_model_name(item["model"], f"splits[{i}].model"), weight))
        _no_repeats([s.model for s in splits], "splits")
        if sum(s.weight for s in splits) <= 0:
            raise InvalidSpec("the weights of splits must add up to more than 0")
        raw_shadows = body.get("shadows") or []
        if not isinstance(raw_shadows, list):
            raise InvalidSpec('shadows must be a list like [{"model": "c", "percent": 100}]')
        shadows: list[Shadow] = []
        for i, item in enumerate(raw_shadows):
            if not isinstance(item, dict) or set(item) - {"model", "percent"} or "model" not in item:
                raise InvalidSpec(f'shadows[{i}] must be {{"model": name, "percent": 0..100}}, got {item!r}')
            percent = item.get("percent", 100)
            if not _is_number(percent) or not 0 <= percent <= 100:
                raise InvalidSpec(f"shadows[{i}].percent must be a number from 0 to 100, got {percent!r}")
            shadows.append(Shadow(_model_name(item["model"], f"shadows[{i}].model"), float(percent)))
        _no_repeats([s.model for s in shadows], "shadows")
        sticky = body.get("sticky_header")
        if sticky is not None:
            if not isinstance(sticky, str) or not HEADER_RE.match(sticky.lower()):
                raise InvalidSpec(f"sticky_header must be a header name like x-user-id, or null; got {sticky!r}")
            sticky = sticky.lower()
        hedge = HedgePolicy.parse(body.get("hedge"))
        return RouteSpec(name, tuple(splits), tuple(shadows), sticky, hedge)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "splits": [{"model": s.model, "weight": s.weight} for s in self.splits],
            "shadows": [{"model": s.model, "percent": s.percent} for s in self.shadows],
            "sticky_header": self.sticky_header,
            "hedge": self.hedge.to_json() if self.hedge else None,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> RouteSpec:
        return RouteSpec(
            data["name"],
            tuple(Split(s["model"], int(s["weight"])) for s in data["splits"]),
            tuple(Shadow(s["model"], float(s["percent"])) for s in data.get("shadows") or ()),
            data.get("sticky_header"),
            HedgePolicy.from_json(data.get("hedge")),
        )


def _model_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(f"{where} must be a model name, got {value!r}")
    return check_name("model", value)


def _no_repeats(names: list[str], where: str) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidSpec(f"{where} name(s) {twice} more than once; name each model once")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536


def _is_base_path(value: str) -> bool:
    if "\n" in value or "\x00" in value:
        return False
    if value.startswith("/"):
        return True
    scheme, sep, rest = value.partition("://")
    return bool(sep) and scheme.isalnum() and bool(rest)


def _is_s3(source: str) -> bool:
    if not source.startswith("s3://"):
        return False
    bucket = source[5:].split("/", 1)[0]
    return bool(bucket)
