"""What every part of `RedisStore` shares: the client, the prefix, the events channel, call counts, key names,
the registered scripts, and the codecs of stored records."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from placement.records import BackendRecord, BackendSpec, CopyRecord, CopyState
from placement.store.scripts import (
    _ADOPT,
    _ADOPT_HELD,
    _BEGIN_UNLOAD,
    _COMMIT,
    _FAIL,
    _GAPS,
    _LEASE_RELEASE,
    _LEASE_RENEW,
    _LOAD_SECONDS,
    _LOCK_RELEASE,
    _PUT_ROUTE,
    _REMOVE,
    _RESERVE,
    _ROLLOUT_WRITE,
    _SEED,
    _SENT_SET,
)


class StoreBase:
    """The state and key names the concept mixins of `RedisStore` build on; no I/O until called."""

    def __init__(self, client: aioredis.Redis, prefix: str = "modelyard") -> None:
        self.r = client
        self.p = prefix
        self.events = f"{prefix}:events"
        self.calls: dict[str, int] = {}
        self._reserve = client.register_script(_RESERVE)
        self._adopt = client.register_script(_ADOPT)
        self._commit = client.register_script(_COMMIT)
        self._fail = client.register_script(_FAIL)
        self._begin_unload = client.register_script(_BEGIN_UNLOAD)
        self._remove = client.register_script(_REMOVE)
        self._renew = client.register_script(_LEASE_RENEW)
        self._release = client.register_script(_LEASE_RELEASE)
        self._lock_release = client.register_script(_LOCK_RELEASE)
        self._sent_set = client.register_script(_SENT_SET)
        self._put_route = client.register_script(_PUT_ROUTE)
        self._seed = client.register_script(_SEED)
        self._adopt_held = client.register_script(_ADOPT_HELD)
        self._load_seconds = client.register_script(_LOAD_SECONDS)
        self._gaps = client.register_script(_GAPS)
        self._rollout_write = client.register_script(_ROLLOUT_WRITE)

    # -- keys ------------------------------------------------------------------------------------------
    def k_backend(self, bid: str) -> str:
        return f"{self.p}:backend:{bid}"

    def k_model(self, name: str) -> str:
        return f"{self.p}:model:{name}"

    def k_copies(self, bid: str) -> str:
        return f"{self.p}:copies:{bid}"

    def k_where(self, name: str) -> str:
        return f"{self.p}:where:{name}"

    def k_lru(self, bid: str) -> str:
        return f"{self.p}:lru:{bid}"

    def k_lease(self, name: str) -> str:
        return f"{self.p}:lease:{name}"

    def k_served(self, bid: str, part: str) -> str:
        return f"{self.p}:served:{bid}:{part}"

    @property
    def k_models_ver(self) -> str:
        return f"{self.p}:modelsver"

    @property
    def k_tombstones(self) -> str:
        return f"{self.p}:tombstones"

    def k_rstat(self, route: str) -> str:
        return f"{self.p}:rstat:{route}"

    def k_rollout(self, route: str) -> str:
        return f"{self.p}:rollout:{route}"

    def _count(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1

    async def ping(self) -> bool:
        self._count("ping")
        return bool(await self.r.ping())

    async def publish(self, event: dict[str, Any]) -> None:
        self._count("publish")
        await self.r.publish(self.events, json.dumps(event))

    # Here, not in `Rebuild`: `Registry.snapshot` reads it first.
    async def generation(self) -> str | None:
        """The generation id, or None when Redis has none (it is new, or lost its data)."""
        self._count("read")
        raw = await self.r.get(f"{self.p}:generation")
        return _s(raw) if raw is not None else None


def version() -> int:
    """A record's version: wall-clock milliseconds of the writer (see the module docstring for the limits)."""
    return time.time_ns() // 1_000_000


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _backend_from_hash(data: dict[Any, Any]) -> BackendRecord | None:
    if not data or b"spec" not in data:
        return None
    spec = BackendSpec.from_json(json.loads(data[b"spec"]))
    return BackendRecord(
        spec=spec,
        healthy=data.get(b"healthy", b"1") == b"1",
        draining=data.get(b"draining", b"0") == b"1",
    )


def _copy_from_json(model: str, bid: str, raw: Any) -> CopyRecord:
    c = json.loads(raw)
    return CopyRecord(
        model=model,
        backend=bid,
        state=CopyState(c["state"]),
        token=int(c.get("token") or 0),
        memory_bytes=int(c.get("bytes") or 0),
        since=float(c.get("since") or 0),
        reason=c.get("reason"),
    )
