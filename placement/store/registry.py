"""The registry in Redis: backends, models and routes, and the snapshot of it a view starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from placement.records import BackendRecord, BackendSpec, CopyRecord, ModelSpec, ModelStatus, RouteSpec
from placement.store.base import StoreBase, _backend_from_hash, _copy_from_json, _s, version


@dataclass(frozen=True, slots=True)
class ModelsMark:
    """What tells a view that nobody wrote a model since it read them all, in one round trip: the counter every
    model write increments (`p:modelsver`) and how many models are registered (the count also moves when Redis
    loses records without a write, as a failover to a replica that was behind does)."""

    version: int
    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the local view mirrors, read in one go."""

    backends: dict[str, BackendRecord]
    models: dict[str, ModelSpec]
    copies: dict[str, dict[str, CopyRecord]]  # model -> backend -> copy
    routes: dict[str, RouteSpec] = field(default_factory=dict)
    # Data-loss detection and re-seeding (placement.rebuild): the generation id (None: Redis has none), the
    # version of each record ("kind:name" -> version) and the tombstones of deleted ones.
    generation: str | None = None
    versions: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    # The models' mark (`ModelsMark`) read before the models; `models_kept`: it equalled the caller's, so the
    # models were not read (`models` is empty, their versions absent): the caller's own are current.
    models_mark: ModelsMark | None = None
    models_kept: bool = False


# Models are read in pipelines of this many: a snapshot, a burst of events, a page of the admin API.
CHUNK = 500


class Registry(StoreBase):
    """Writes and reads of backends, models and routes; each write publishes its event and stamps its version."""

    # -- backends --------------------------------------------------------------------------------------
    async def put_backend(self, spec: BackendSpec) -> None:
        self._count("admin")
        cap_bytes = spec.capacity.memory_bytes if spec.capacity.memory_bytes is not None else -1
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.sadd(f"{self.p}:backends", spec.id)
            pipe.hset(
                self.k_backend(spec.id),
                mapping={
                    "spec": json.dumps(spec.to_json()),
                    "cap_models": spec.capacity.models,
                    "cap_bytes": cap_bytes,
                    "ver": version(),
                },
            )
            pipe.hsetnx(self.k_backend(spec.id), "healthy", "1")
            pipe.hsetnx(self.k_backend(spec.id), "draining", "0")
            pipe.publish(self.events, json.dumps({"t": "backend", "b": spec.id}))
            await pipe.execute()

    async def set_backend_flag(self, bid: str, flag: str, value: bool) -> bool:
        """Set `healthy` or `draining`; returns False when the backend is not registered."""
        self._count("admin")
        key = self.k_backend(bid)
        if not await self.r.exists(key):
            return False
        await self.r.hset(key, flag, "1" if value else "0")
        await self.publish({"t": "backend", "b": bid})
        return True

    async def get_backend(self, bid: str) -> BackendRecord | None:
        self._count("read")
        data = await self.r.hgetall(self.k_backend(bid))
        return _backend_from_hash(data)

    async def delete_backend(self, bid: str) -> None:
        self._count("admin")
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.srem(f"{self.p}:backends", bid)
            pipe.delete(self.k_backend(bid), self.k_copies(bid), self.k_lru(bid), self.k_served(bid, "sent"))
            pipe.hset(self.k_tombstones, f"backend:{bid}", version())
            pipe.publish(self.events, json.dumps({"t": "backend", "b": bid}))
            await pipe.execute()

    # -- models ----------------------------------------------------------------------------------------
    async def put_model(self, spec: ModelSpec) -> None:
        self._count("admin")
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(f"{self.p}:models", {spec.name: 0})
            pipe.hset(self.k_model(spec.name), mapping={"spec": json.dumps(spec.to_json()), "ver": version()})
            pipe.incr(self.k_models_ver)
            pipe.publish(self.events, json.dumps({"t": "model", "m": spec.name}))
            await pipe.execute()

    async def put_models(self, specs: list[ModelSpec]) -> None:
        """Write many model specs in one transaction (all or none), with one event per model."""
        self._count("admin")
        async with self.r.pipeline(transaction=True) as pipe:
            if specs:
                pipe.zadd(f"{self.p}:models", {s.name: 0 for s in specs})
                pipe.incr(self.k_models_ver)
            for spec in specs:
                pipe.hset(self.k_model(spec.name), mapping={"spec": json.dumps(spec.to_json()), "ver": version()})
                pipe.publish(self.events, json.dumps({"t": "model", "m": spec.name}))
            await pipe.execute()

    async def get_model_spec(self, name: str) -> ModelSpec | None:
        self._count("read")
        raw = await self.r.hget(self.k_model(name), "spec")
        return ModelSpec.from_json(json.loads(raw)) if raw else None

    async def delete_model(self, name: str) -> None:
        self._count("admin")
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(f"{self.p}:models", name)
            pipe.zrem(f"{self.p}:lastused", name)
            pipe.hdel(f"{self.p}:requests", name)
            pipe.delete(self.k_model(name), self.k_where(name))
            pipe.incr(self.k_models_ver)
            pipe.hset(self.k_tombstones, f"model:{name}", version())
            pipe.publish(self.events, json.dumps({"t": "model", "m": name}))
            await pipe.execute()

    async def list_model_names(self, limit: int, after: str | None) -> list[str]:
        self._count("read")
        start = f"({after}" if after else "-"
        names = await self.r.zrangebylex(f"{self.p}:models", start, "+", start=0, num=limit)
        return [n.decode() if isinstance(n, bytes) else n for n in names]

    async def model_specs(self, names: list[str]) -> dict[str, ModelSpec | None]:
        """The specs of many models (None: not registered), in one round trip per `CHUNK` names."""
        out: dict[str, ModelSpec | None] = {}
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            self._count("read")
            async with self.r.pipeline(transaction=False) as pipe:
                for n in chunk:
                    pipe.hget(self.k_model(n), "spec")
                raws = await pipe.execute()
            for n, raw in zip(chunk, raws, strict=True):
                out[n] = ModelSpec.from_json(json.loads(raw)) if raw else None
        return out

    async def model_status(self, name: str) -> ModelStatus | None:
        return (await self.model_statuses([name])).get(name)

    async def model_statuses(self, names: list[str]) -> dict[str, ModelStatus]:
        """The status of many models (the registered ones; in the order given) in two round trips per `CHUNK`:
        each model's hash, where its copies are and its last use; then those copies."""
        out: dict[str, ModelStatus] = {}
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            self._count("read")
            async with self.r.pipeline(transaction=False) as pipe:
                for n in chunk:
                    pipe.hgetall(self.k_model(n))
                    pipe.smembers(self.k_where(n))
                    pipe.zscore(f"{self.p}:lastused", n)
                raws = await pipe.execute()
            found = [
                (n, data, sorted(_s(b) for b in where), last)
                for n, data, where, last in zip(chunk, raws[0::3], raws[1::3], raws[2::3], strict=True)
                if data and b"spec" in data
            ]
            held: list[bytes | None] = []
            if any(where for _, _, where, _ in found):
                async with self.r.pipeline(transaction=False) as pipe:
                    for n, _, where, _ in found:
                        for bid in where:
                            pipe.hget(self.k_copies(bid), n)
                    held = await pipe.execute()
            it = iter(held)
            for n, data, where, last in found:
                copies = [_copy_from_json(n, bid, raw) for bid in where if (raw := next(it))]
                out[n] = _status(data, copies, last)
        return out

    # -- routes ----------------------------------------------------------------------------------------
    async def put_route(self, spec: RouteSpec) -> str:
        """Store a route: 'ok', 'model' (a model has its name), 'missing:a,b' (models not registered) or
        'runtimes:a=triton,b=tfserving' (its models don't share a runtime)."""
        self._count("admin")
        models = spec.models
        res = await self._put_route(
            keys=[f"{self.p}:routes", self.k_model(spec.name), *(self.k_model(m) for m in models)],
            args=[spec.name, json.dumps(spec.to_json()), self.events, *models],
        )
        if _s(res) == "ok":
            await self.r.hset(f"{self.p}:routever", spec.name, version())
        return _s(res)

    async def get_route(self, name: str) -> RouteSpec | None:
        self._count("read")
        raw = await self.r.hget(f"{self.p}:routes", name)
        return RouteSpec.from_json(json.loads(raw)) if raw else None

    async def routes(self) -> dict[str, RouteSpec]:
        self._count("read")
        raw = await self.r.hgetall(f"{self.p}:routes")
        return {_s(n): RouteSpec.from_json(json.loads(v)) for n, v in raw.items()}

    async def routes_named(self, names: list[str]) -> dict[str, RouteSpec | None]:
        """The specs of many routes (None: not registered), in one round trip."""
        if not names:
            return {}
        self._count("read")
        raws = await self.r.hmget(f"{self.p}:routes", names)
        return {n: RouteSpec.from_json(json.loads(raw)) if raw else None for n, raw in zip(names, raws, strict=True)}

    async def route_exists(self, name: str) -> bool:
        self._count("read")
        return bool(await self.r.hexists(f"{self.p}:routes", name))

    async def delete_route(self, name: str) -> bool:
        self._count("admin")
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.p}:routes", name)
            pipe.publish(self.events, json.dumps({"t": "route", "r": name}))
            pipe.hdel(f"{self.p}:routever", name)
            pipe.hset(self.k_tombstones, f"route:{name}", version())
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    # -- snapshot --------------------------------------------------------------------------------------
    async def snapshot(self, known: ModelsMark | None = None) -> Snapshot:
        """Read the whole registry; used when a view starts, reconnects, or resyncs. With `known` (the mark of
        the models the caller read last), the models are read only when the mark moved (`models_kept`): what
        a periodic resync costs then grows with the backends, copies and routes, not with the models."""
        self._count("snapshot")
        generation = await self.generation()  # first: a loss after this read is seen at the next look
        bids = sorted(_s(b) for b in await self.r.smembers(f"{self.p}:backends"))
        backends: dict[str, BackendRecord] = {}
        versions: dict[str, int] = {}
        copies: dict[str, dict[str, CopyRecord]] = {}
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.k_models_ver)  # before the models, so a write after this read moves the next mark
            pipe.zcard(f"{self.p}:models")
            for bid in bids:
                pipe.hgetall(self.k_backend(bid))
                pipe.hgetall(self.k_copies(bid))
            ver, count, *raws = await pipe.execute()
        mark = ModelsMark(int(ver or 0), int(count))
        for i, bid in enumerate(bids):
            rec = _backend_from_hash(raws[2 * i])
            if rec is None:
                continue
            backends[bid] = rec
            versions[f"backend:{bid}"] = int(raws[2 * i].get(b"ver", b"0"))
            for m, raw in raws[2 * i + 1].items():
                name = _s(m)
                copies.setdefault(name, {})[bid] = _copy_from_json(name, bid, raw)
        models: dict[str, ModelSpec] = {}
        kept = known == mark
        names = [] if kept else [_s(n) for n in await self.r.zrange(f"{self.p}:models", 0, -1)]
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            async with self.r.pipeline(transaction=False) as pipe:
                for n in chunk:
                    pipe.hmget(self.k_model(n), "spec", "ver")
                specs = await pipe.execute()
            for n, (raw, ver) in zip(chunk, specs, strict=True):
                if raw:
                    models[n] = ModelSpec.from_json(json.loads(raw))
                    versions[f"model:{n}"] = int(ver or 0)
        routes = await self.routes()
        for rn, rver in (await self.r.hgetall(f"{self.p}:routever")).items():
            if _s(rn) in routes:
                versions[f"route:{_s(rn)}"] = int(rver)
        tombs = {_s(k): int(v) for k, v in (await self.r.hgetall(self.k_tombstones)).items()}
        return Snapshot(backends, models, copies, routes, generation, versions, tombs, mark, kept)


def _status(data: dict[bytes, bytes], copies: list[CopyRecord], last_used: float | None) -> ModelStatus:
    retry_at = float(data.get(b"retry_at", b"0") or 0)
    return ModelStatus(
        spec=ModelSpec.from_json(json.loads(data[b"spec"])),
        copies=copies,
        last_used=last_used,
        loads=int(data.get(b"loads", b"0")),
        failures=int(data.get(b"failures", b"0")),
        last_error=_s(data[b"last_error"]) or None if b"last_error" in data else None,
        retry_at=retry_at or None,
    )
