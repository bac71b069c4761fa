"""All of modelyard's Redis: the key layout, the Lua scripts, and typed calls over them.

Key layout (`p` is the configured prefix, default "modelyard"):

    p:backends                 SET of backend ids
    p:backend:{id}             HASH spec (JSON), cap_models, cap_bytes (-1 = none), healthy 1/0, draining 1/0
    p:models                   ZSET of model names, all scored 0 (lexicographic paging)
    p:model:{name}             HASH spec (JSON), loads, failures, last_error, retry_at
    p:copies:{backend}         HASH model -> copy JSON {state, token, bytes, since, reason}
    p:where:{model}            SET of backends that hold a copy entry of the model (any state)
    p:lru:{backend}            ZSET model -> last used (epoch seconds) of the copy on that backend
    p:lastused                 ZSET model -> last used anywhere
    p:lease:{model}            STRING fencing token of the gateway loading the model; expires (PX)
    p:fence                    INCR counter of fencing tokens
    p:served:{backend}:lock    STRING fencing token of the gateway sending a backend its model list; expires (PX)
    p:served:{backend}:sent    STRING JSON model list last sent to a list-configured backend (TF Serving)
    p:routes                   HASH route name -> spec JSON (splits, shadows, sticky_header, hedge)
    p:requests                 HASH model -> requests served, ever (summed over gateways, written in batches);
                               the reconcile leader turns it into rates to scale copies
    p:loadsec                  HASH model -> learned seconds of one load (moving average; eviction weighs it)
    p:gaps                     HASH model -> learned mean seconds between its requests (written with usage)
    p:events                   pub/sub channel of JSON change events (see `placement.view`)
    p:generation               STRING random id written once into an empty Redis; when it vanishes or changes,
                               Redis lost data and the gateways rebuild it (`placement.rebuild`)
    p:routever                 HASH route name -> version (the other records keep theirs in field `ver`)
    p:tombstones               HASH "backend:id" / "model:name" / "route:name" -> version of the delete

Versions are wall-clock milliseconds of the writing gateway: a re-seed after data loss keeps, per record, the
highest version among what Redis has and what each gateway's view offers, deletes (tombstones) included.

Rollouts and route statistics (the block at the end of `RedisStore`, `placement.rollout`, `placement.route_stats`):

    p:rstat:{route}            HASH sums of every gateway's flushes: m|{model}|req, m|{model}|err, m|{model}|b{i}
                               (latency bucket i), s|{shadow}|{sent,agree,disagree,failed,dropped},
                               s|{shadow}|p{i} / s|{shadow}|s{i} (primary / shadow latency buckets)
    p:rdis:{route}             LIST the route's latest shadow disagreements (JSON), newest first, capped
    p:rollouts                 SET routes that have a rollout record
    p:rollout:{route}          STRING rollout state JSON; written only by `rollout_write`, which checks its version

Capacity is only ever taken by `reserve`, which counts the backend's copies and reserves the slot in one
script, so two gateways can never both take the last slot. A slot is freed only by `finish_unload` (after the
backend finished unloading), by `fail`, or by `drop` (the backend lost the copy). Every write that belongs to
a load checks the fencing token against the lease, so a gateway whose lease expired cannot write.
A route and a model never share a name, and a route names only registered models of one runtime: `put_route`
checks both in the script that writes it.
TF Serving is configured by whole model lists, not per model: `served_lock_*` serialize the sending of a
backend's list across gateways, and `served_sent_set` records what was sent, fenced by the lock's token.
Scripts use only EVAL/EVALSHA and cjson, so Redis 6.2, 7.x and Valkey all run them.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from placement.arrivals import WEIGHT
from placement.records import BackendRecord, BackendSpec, CopyRecord, CopyState, ModelSpec, ModelStatus, RouteSpec
from placement.route_stats import DISAGREEMENTS_KEPT, Batch, ModelCounts, RouteCounts, ShadowCounts

# Returns 'full' unless one more copy of `bytes` fits the backend: its copies in any state but failed count.
_FULL = """
local cap_models = tonumber(redis.call('HGET', backend, 'cap_models'))
local cap_bytes = tonumber(redis.call('HGET', backend, 'cap_bytes') or '-1')
local n, used = 0, 0
for _, v in ipairs(redis.call('HVALS', copies)) do
  local c = cjson.decode(v)
  if c.state ~= 'failed' then n = n + 1; used = used + (c.bytes or 0) end
end
if n + 1 > cap_models or (cap_bytes >= 0 and used + bytes > cap_bytes) then return 'full' end
"""

# Each script publishes its own event, so a change and its announcement can't be separated.
_RESERVE = (
    """
local copies, where, backend = KEYS[1], KEYS[2], KEYS[3]
local model, bytes, token, now, events, bid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', backend) == 0 then return 'gone' end
if redis.call('HGET', backend, 'draining') == '1' then return 'draining' end
local cur = redis.call('HGET', copies, model)
if cur then
  local c = cjson.decode(cur)
  if c.state ~= 'failed' then return 'exists:' .. c.state end
end
"""
    + _FULL
    + """local entry = {state='loading', token=tonumber(token), bytes=bytes, since=tonumber(now)}
redis.call('HSET', copies, model, cjson.encode(entry))
redis.call('SADD', where, bid)
redis.call('PUBLISH', events, cjson.encode({t='copy', m=model, b=bid, s='loading'}))
return 'ok'
"""
)

# Moves a loading copy left by a gateway whose lease is gone to the current lease holder.
_ADOPT = """
local copies, lease = KEYS[1], KEYS[2]
local model, token = ARGV[1], ARGV[2]
if redis.call('GET', lease) ~= token then return 'fenced' end
local cur = redis.call('HGET', copies, model)
if not cur then return 'none' end
local c = cjson.decode(cur)
if c.state ~= 'loading' then return 'state:' .. c.state end
c.token = tonumber(token)
redis.call('HSET', copies, model, cjson.encode(c))
return 'ok'
"""

# ARGV[6] 'orphan': the copy's load lost its gateway (no lease is held) and the backend holds the model ready,
# so reconciliation commits it for the gone gateway instead of unloading a model that is serving-ready.
_COMMIT = """
local copies, lease, mkey, lru = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local model, token, now, events, bid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local holder = redis.call('GET', lease)
if ARGV[6] == 'orphan' then
  if holder then return 'leased' end
elseif holder ~= token then return 'fenced' end
local cur = redis.call('HGET', copies, model)
if not cur then return 'lost' end
local c = cjson.decode(cur)
if c.state ~= 'loading' or tostring(c.token) ~= token then return 'lost' end
c.state = 'ready'; c.since = tonumber(now)
redis.call('HSET', copies, model, cjson.encode(c))
redis.call('HINCRBY', mkey, 'loads', 1)
redis.call('HSET', mkey, 'failures', 0, 'last_error', '', 'retry_at', 0)
redis.call('ZADD', lru, now, model)
redis.call('PUBLISH', events, cjson.encode({t='copy', m=model, b=bid, s='ready'}))
return 'ok'
"""

_FAIL = """
local copies, lease, mkey = KEYS[1], KEYS[2], KEYS[3]
local model, token, now, reason, backoff_base, backoff_max, events, bid =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
if redis.call('GET', lease) ~= token then return 'fenced' end
local cur = redis.call('HGET', copies, model)
if cur then
  local c = cjson.decode(cur)
  if c.state == 'loading' and tostring(c.token) == token then
    redis.call('HSET', copies, model, cjson.encode({state='failed', token=c.token, bytes=0, since=now, reason=reason}))
  end
end
local failures = redis.call('HINCRBY', mkey, 'failures', 1)
local delay = math.min(backoff_max, backoff_base * math.pow(2, failures - 1))
redis.call('HSET', mkey, 'last_error', reason, 'retry_at', tostring(now + delay))
redis.call('PUBLISH', events, cjson.encode({t='copy', m=model, b=bid, s='failed'}))
return tostring(delay)
"""

_BEGIN_UNLOAD = """
local copies, events = KEYS[1], ARGV[3]
local model, bid, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local cur = redis.call('HGET', copies, model)
if not cur then return 'none' end
local c = cjson.decode(cur)
if c.state ~= ARGV[5] then return 'state:' .. c.state end
if ARGV[6] ~= '' and tostring(c.token) ~= ARGV[6] then return 'fenced' end
c.state = 'unloading'; c.since = now
redis.call('HSET', copies, model, cjson.encode(c))
redis.call('PUBLISH', events, cjson.encode({t='copy', m=model, b=bid, s='unloading'}))
return 'ok'
"""

# Frees the slot of a copy; `expect` says which state it must be in ('unloading' after an unload finished,
# 'ready' or 'loading' when the backend turned out not to hold it, 'failed' to clear a failure).
_REMOVE = """
local copies, where, lru = KEYS[1], KEYS[2], KEYS[3]
local model, expect, events, bid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', copies, model)
if not cur then return 'none' end
local c = cjson.decode(cur)
if expect ~= '*' and c.state ~= expect then return 'state:' .. c.state end
redis.call('HDEL', copies, model)
redis.call('SREM', where, bid)
redis.call('ZREM', lru, model)
redis.call('PUBLISH', events, cjson.encode({t='copy', m=model, b=bid, s='gone'}))
return 'ok'
"""

_LEASE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], cjson.encode({t='lease', m=ARGV[3]}))
  return 1
end
return 0
"""

# Frees a lock held with `token`, without an event (nobody waits on these by subscription).
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SENT_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

# KEYS: routes hash, the model key of the route's own name, then the model key of each model the route names
# (ARGV[4..] are their names). Refuses a name a model has, models that are not registered, and mixed runtimes.
_PUT_ROUTE = """
local routes, own = KEYS[1], KEYS[2]
local name, spec, events = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HEXISTS', own, 'spec') == 1 then return 'model' end
local missing, runtimes, first = {}, {}, nil
for i = 3, #KEYS do
  local raw = redis.call('HGET', KEYS[i], 'spec')
  local model = ARGV[i + 1]
  if not raw then
    table.insert(missing, model)
  else
    local runtime = cjson.decode(raw).runtime
    table.insert(runtimes, model .. '=' .. runtime)
    if first == nil then first = runtime elseif first ~= runtime then first = false end
  end
end
if #missing > 0 then return 'missing:' .. table.concat(missing, ',') end
if first == false then return 'runtimes:' .. table.concat(runtimes, ',') end
redis.call('HSET', routes, name, spec)
redis.call('PUBLISH', events, cjson.encode({t='route', r=name}))
return 'ok'
"""


# -- rollouts ---------------------------------------------------------------------------------------------
# KEYS: rollout key, routes hash, rollouts set. ARGV: expected version ('' = no record or a finished one), new
# state JSON, route name, new route spec JSON ('' = leave the route), events channel.
# The state and the route it sets change together, or neither does; a deleted route is never brought back.
_ROLLOUT_WRITE = """
local cur = redis.call('GET', KEYS[1])
local expect = ARGV[1]
if cur then
  local c = cjson.decode(cur)
  if expect == '' then
    if c.phase == 'shadow' or c.phase == 'step' then return 'running' end
  elseif tostring(c.version) ~= expect then return 'conflict' end
elseif expect ~= '' then return 'conflict' end
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return 'gone' end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('PUBLISH', ARGV[5], cjson.encode({t='route', r=ARGV[3]}))
end
return 'ok'
"""

# Re-seeds one registry record (or its tombstone) after Redis lost data, unless Redis already has a newer
# version of it or a newer delete. KEYS: tombstones, backends set, models zset, routes hash, routever hash, the
# record's own key (backend or model hash; the routes hash for a route). ARGV: kind, name, version, spec JSON
# ('' for a tombstone), cap_models, cap_bytes, events.
_SEED = """
local tombs, bset, mset, routes, routever, own = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local kind, name, ver, spec, events = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[7]
local tkey = kind .. ':' .. name
local tver = tonumber(redis.call('HGET', tombs, tkey) or '-1')
local cur
if kind == 'route' then
  cur = tonumber(redis.call('HGET', routever, name) or (redis.call('HEXISTS', routes, name) == 1 and '0' or '-1'))
else
  cur = tonumber(redis.call('HGET', own, 'ver') or (redis.call('HEXISTS', own, 'spec') == 1 and '0' or '-1'))
end
if ver <= tver or ver <= cur then return 'kept' end
if spec == '' then
  redis.call('HSET', tombs, tkey, ver)
  if cur < 0 then return 'tomb' end
  if kind == 'backend' then redis.call('SREM', bset, name); redis.call('DEL', own)
  elseif kind == 'model' then redis.call('ZREM', mset, name); redis.call('DEL', own)
  else redis.call('HDEL', routes, name); redis.call('HDEL', routever, name) end
else
  if kind == 'backend' then
    redis.call('SADD', bset, name)
    redis.call('HSET', own, 'spec', spec, 'cap_models', ARGV[5], 'cap_bytes', ARGV[6], 'ver', ver)
    redis.call('HSETNX', own, 'healthy', '1'); redis.call('HSETNX', own, 'draining', '0')
  elseif kind == 'model' then
    redis.call('ZADD', mset, 0, name); redis.call('HSET', own, 'spec', spec, 'ver', ver)
  else
    redis.call('HSET', routes, name, spec); redis.call('HSET', routever, name, ver)
  end
end
local ev = {t=kind}
if kind == 'backend' then ev.b = name elseif kind == 'model' then ev.m = name else ev.r = name end
redis.call('PUBLISH', events, cjson.encode(ev))
return 'seeded'
"""

# Records a copy the backend reports holding and Redis doesn't know, as ready, if the model is registered for
# the backend's runtime and fits the backend's capacity; never displaces a copy entry that exists.
_ADOPT_HELD = (
    """
local copies, where, backend, mkey, lru, lastused = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local model, now, events, bid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local bspec = redis.call('HGET', backend, 'spec')
if not bspec then return 'gone' end
local mspec = redis.call('HGET', mkey, 'spec')
if not mspec then return 'unregistered' end
local m = cjson.decode(mspec)
if m.runtime ~= cjson.decode(bspec).kind then return 'unregistered' end
local cur = redis.call('HGET', copies, model)
if cur and cjson.decode(cur).state ~= 'failed' then return 'exists' end
local bytes = tonumber(m.memory_bytes) or 0
"""
    + _FULL
    + """redis.call('HSET', copies, model, cjson.encode({state='ready', token=0, bytes=bytes, since=now}))
redis.call('SADD', where, bid)
redis.call('ZADD', lru, 'NX', now, model)
redis.call('ZADD', lastused, 'NX', now, model)
redis.call('PUBLISH', events, cjson.encode({t='copy', m=model, b=bid, s='ready'}))
return 'ok'
"""
)


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


# Each model's mean gap between requests (placement.arrivals.update_gap, the same rule): ARGV = weight, then
# (model, when, n) triples; the previous request is the model's last use anywhere, before this flush moves it.
_GAPS = """
local w = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local m, when, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local prev = tonumber(redis.call('ZSCORE', KEYS[1], m))
  if prev and n > 0 and when > prev then
    local gap = (when - prev) / n
    local old = tonumber(redis.call('HGET', KEYS[2], m))
    if old then gap = (1 - w) * old + w * gap end
    redis.call('HSET', KEYS[2], m, tostring(gap))
  end
end
return 1
"""

# A model's load time, smoothed: the first load sets it, each later one moves it 30% of the way.
_LOAD_SECONDS = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local v = tonumber(ARGV[2])
if old then v = 0.7 * old + 0.3 * v end
redis.call('HSET', KEYS[1], ARGV[1], tostring(v))
return 1
"""


class RedisStore:
    """Typed access to modelyard's Redis. One per gateway; it does no I/O until called."""

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

    def _count(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1

    async def ping(self) -> bool:
        self._count("ping")
        return bool(await self.r.ping())

    async def publish(self, event: dict[str, Any]) -> None:
        self._count("publish")
        await self.r.publish(self.events, json.dumps(event))

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
            pipe.publish(self.events, json.dumps({"t": "model", "m": spec.name}))
            await pipe.execute()

    async def put_models(self, specs: list[ModelSpec]) -> None:
        """Write many model specs in one transaction (all or none), with one event per model."""
        self._count("admin")
        async with self.r.pipeline(transaction=True) as pipe:
            if specs:
                pipe.zadd(f"{self.p}:models", {s.name: 0 for s in specs})
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
            pipe.hset(self.k_tombstones, f"model:{name}", version())
            pipe.publish(self.events, json.dumps({"t": "model", "m": name}))
            await pipe.execute()

    async def list_model_names(self, limit: int, after: str | None) -> list[str]:
        self._count("read")
        start = f"({after}" if after else "-"
        names = await self.r.zrangebylex(f"{self.p}:models", start, "+", start=0, num=limit)
        return [n.decode() if isinstance(n, bytes) else n for n in names]

    async def model_status(self, name: str) -> ModelStatus | None:
        self._count("read")
        data = await self.r.hgetall(self.k_model(name))
        if not data or b"spec" not in data:
            return None
        spec = ModelSpec.from_json(json.loads(data[b"spec"]))
        backends = [_s(b) for b in await self.r.smembers(self.k_where(name))]
        copies = []
        for bid in sorted(backends):
            raw = await self.r.hget(self.k_copies(bid), name)
            if raw:
                copies.append(_copy_from_json(name, bid, raw))
        last_used = await self.r.zscore(f"{self.p}:lastused", name)
        retry_at = float(data.get(b"retry_at", b"0") or 0)
        return ModelStatus(
            spec=spec,
            copies=copies,
            last_used=last_used,
            loads=int(data.get(b"loads", b"0")),
            failures=int(data.get(b"failures", b"0")),
            last_error=_s(data[b"last_error"]) or None if b"last_error" in data else None,
            retry_at=retry_at or None,
        )

    # -- copies ----------------------------------------------------------------------------------------
    async def copies_of(self, name: str) -> list[CopyRecord]:
        """The copies of one model, straight from Redis (the cold path's source of truth)."""
        self._count("read")
        backends = [_s(b) for b in await self.r.smembers(self.k_where(name))]
        if not backends:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for bid in backends:
                pipe.hget(self.k_copies(bid), name)
            raws = await pipe.execute()
        return [_copy_from_json(name, bid, raw) for bid, raw in zip(backends, raws, strict=True) if raw]

    async def copies_on(self, bid: str) -> list[CopyRecord]:
        self._count("read")
        data = await self.r.hgetall(self.k_copies(bid))
        return [_copy_from_json(_s(m), bid, raw) for m, raw in data.items()]

    async def lru_of(self, bid: str) -> dict[str, float]:
        """Last-used time of each copy on a backend (copies never used are absent)."""
        self._count("read")
        pairs: list[Any] = await self.r.zrange(self.k_lru(bid), 0, -1, withscores=True)
        return {_s(m): float(s) for m, s in pairs}

    async def reserve(self, bid: str, model: str, memory_bytes: int, token: int, now: float) -> str:
        self._count("script")
        res = await self._reserve(
            keys=[self.k_copies(bid), self.k_where(model), self.k_backend(bid)],
            args=[model, memory_bytes, token, now, self.events, bid],
        )
        return _s(res)

    async def adopt(self, bid: str, model: str, token: int) -> str:
        self._count("script")
        res = await self._adopt(keys=[self.k_copies(bid), self.k_lease(model)], args=[model, token])
        return _s(res)

    async def commit(self, bid: str, model: str, token: int, now: float, orphan: bool = False) -> str:
        """Mark a loading copy ready: 'ok', 'fenced' (the lease moved on) or 'lost' (the copy changed). With
        `orphan`, for a load whose gateway is gone: only while nobody holds the model's lease ('leased').
        The model's last use anywhere (p:lastused) is left to the usage flushes: a load is no request, and the
        learned gap between requests (`touch_many`) must not count one (it did: the first request after every
        demand load saw a gap of milliseconds, and a pre-warm a phantom request)."""
        self._count("script")
        res = await self._commit(
            keys=[
                self.k_copies(bid),
                self.k_lease(model),
                self.k_model(model),
                self.k_lru(bid),
            ],
            args=[model, token, now, self.events, bid, "orphan" if orphan else ""],
        )
        return _s(res)

    async def fail(
        self,
        bid: str,
        model: str,
        token: int,
        now: float,
        reason: str,
        backoff_base: float,
        backoff_max: float,
    ) -> str:
        """Mark a load failed; returns the backoff delay in seconds, or 'fenced'."""
        self._count("script")
        res = await self._fail(
            keys=[self.k_copies(bid), self.k_lease(model), self.k_model(model)],
            args=[model, token, now, reason[:2000], backoff_base, backoff_max, self.events, bid],
        )
        return _s(res)

    async def begin_unload(
        self, bid: str, model: str, now: float, expect: CopyState = CopyState.READY, token: int | None = None
    ) -> str:
        """Mark a copy unloading before its backend is asked to drop it; the slot stays taken until
        `remove_copy`. From `loading` (a load given up) pass the load's `token`: 'fenced' if it moved on."""
        self._count("script")
        res = await self._begin_unload(
            keys=[self.k_copies(bid)],
            args=[model, bid, self.events, now, expect.value, "" if token is None else token],
        )
        return _s(res)

    async def remove_copy(self, bid: str, model: str, expect: CopyState | None) -> str:
        """Delete a copy entry if it is in state `expect` (None: any state); frees its slot."""
        self._count("script")
        res = await self._remove(
            keys=[self.k_copies(bid), self.k_where(model), self.k_lru(bid)],
            args=[model, expect.value if expect else "*", self.events, bid],
        )
        return _s(res)

    # -- usage -----------------------------------------------------------------------------------------
    async def touch_many(
        self, used: Iterable[tuple[str, str, float]], requests: Mapping[str, int] | None = None
    ) -> None:
        """Record last-used times, (model, backend, when), and requests served per model since the last call, in
        one round trip. Never moves a time back."""
        items = list(used)
        if not items and not requests:
            return
        self._count("usage_flush")
        async with self.r.pipeline(transaction=False) as pipe:
            # Before last-used times move: each model's gap between requests, from the previous last use anywhere.
            latest: dict[str, float] = {}
            for model, _bid, when in items:
                latest[model] = max(when, latest.get(model, 0.0))
            seen = [(m, latest[m], n) for m, n in (requests or {}).items() if n > 0 and m in latest]
            if seen:
                args: list[Any] = [WEIGHT]
                for m, when, n in seen:
                    args += [m, when, n]
                await self._gaps(keys=[f"{self.p}:lastused", f"{self.p}:gaps"], args=args, client=pipe)
            for model, bid, when in items:
                pipe.zadd(self.k_lru(bid), {model: when}, gt=True, xx=True)
                pipe.zadd(f"{self.p}:lastused", {model: when}, gt=True)
            for model, n in (requests or {}).items():
                pipe.hincrby(f"{self.p}:requests", model, n)
            await pipe.execute()

    async def note_load_seconds(self, model: str, seconds: float) -> None:
        """Learn how long one load of `model` takes (a moving average over its loads; cold path only)."""
        self._count("script")
        await self._load_seconds(keys=[f"{self.p}:loadsec"], args=[model, seconds])

    async def eviction_facts(self, models: Iterable[str]) -> dict[str, tuple[int, float, float]]:
        """(requests since registration, learned load seconds, learned mean gap between requests) of each model,
        in one round trip; zeros when nothing is known. What eviction policies weigh besides last use."""
        names = list(dict.fromkeys(models))
        if not names:
            return {}
        self._count("read")
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{self.p}:requests", names)
            pipe.hmget(f"{self.p}:loadsec", names)
            pipe.hmget(f"{self.p}:gaps", names)
            counts, secs, gaps = await pipe.execute()
        return {
            m: (int(n) if n is not None else 0, float(s) if s is not None else 0.0, float(g) if g else 0.0)
            for m, n, s, g in zip(names, counts, secs, gaps, strict=True)
        }

    async def prewarm_facts(self) -> dict[str, tuple[float, float, float]]:
        """(last used anywhere, learned mean gap, learned load seconds) of every model with a learned gap, in one
        round trip: what the pre-warm leader reads each tick (`placement.prewarm_task`; never the warm path)."""
        self._count("read")
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{self.p}:gaps")
            pipe.zrange(f"{self.p}:lastused", 0, -1, withscores=True)
            pipe.hgetall(f"{self.p}:loadsec")
            gaps, used, secs = await pipe.execute()
        last = {_s(m): float(t) for m, t in used}
        loadsec = {_s(m): float(v) for m, v in secs.items()}
        return {
            _s(m): (last.get(_s(m), 0.0), float(g), loadsec.get(_s(m), 0.0)) for m, g in gaps.items() if float(g) > 0
        }

    async def request_counts(self) -> dict[str, int]:
        """Requests served per model since it was registered, summed over every gateway's flushes."""
        self._count("read")
        raw = await self.r.hgetall(f"{self.p}:requests")
        return {_s(m): int(n) for m, n in raw.items()}

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

    # -- leases ----------------------------------------------------------------------------------------
    async def lease_try(self, model: str, ttl_ms: int) -> int | None:
        """Take the load lease of a model; returns its fencing token, or None when someone holds it."""
        self._count("lease")
        token = int(await self.r.incr(f"{self.p}:fence"))
        ok = await self.r.set(self.k_lease(model), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def lease_renew(self, model: str, token: int, ttl_ms: int) -> bool:
        self._count("lease")
        return bool(await self._renew(keys=[self.k_lease(model)], args=[token, ttl_ms]))

    async def lease_release(self, model: str, token: int) -> None:
        self._count("lease")
        await self._release(keys=[self.k_lease(model)], args=[token, self.events, model])

    async def lease_holder(self, model: str) -> int | None:
        self._count("lease")
        raw = await self.r.get(self.k_lease(model))
        return int(raw) if raw else None

    # -- model lists of list-configured backends (TF Serving) ----------------------------------------------
    def k_served(self, bid: str, part: str) -> str:
        return f"{self.p}:served:{bid}:{part}"

    async def served_lock_try(self, bid: str, ttl_ms: int) -> int | None:
        """Take the right to send backend `bid` its model list; its fencing token, or None when it is held."""
        self._count("served")
        token = int(await self.r.incr(f"{self.p}:fence"))
        ok = await self.r.set(self.k_served(bid, "lock"), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def served_lock_renew(self, bid: str, token: int, ttl_ms: int) -> bool:
        self._count("served")
        return bool(await self._renew(keys=[self.k_served(bid, "lock")], args=[token, ttl_ms]))

    async def served_lock_release(self, bid: str, token: int) -> None:
        self._count("served")
        await self._lock_release(keys=[self.k_served(bid, "lock")], args=[token])

    async def served_sent(self, bid: str) -> str | None:
        self._count("served")
        raw = await self.r.get(self.k_served(bid, "sent"))
        return _s(raw) if raw is not None else None

    async def served_sent_set(self, bid: str, token: int, value: str) -> bool:
        """Record the list sent to `bid`; refused (False) unless `token` still holds the backend's lock."""
        self._count("served")
        keys = [self.k_served(bid, "lock"), self.k_served(bid, "sent")]
        return bool(await self._sent_set(keys=keys, args=[token, value]))

    # -- snapshot --------------------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        """Read the whole registry; used when a view starts, reconnects, or resyncs."""
        self._count("snapshot")
        generation = await self.generation()  # first: a loss after this read is seen at the next look
        bids = sorted(_s(b) for b in await self.r.smembers(f"{self.p}:backends"))
        backends: dict[str, BackendRecord] = {}
        versions: dict[str, int] = {}
        copies: dict[str, dict[str, CopyRecord]] = {}
        async with self.r.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hgetall(self.k_backend(bid))
                pipe.hgetall(self.k_copies(bid))
            raws = await pipe.execute()
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
        names = [_s(n) for n in await self.r.zrange(f"{self.p}:models", 0, -1)]
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
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
        return Snapshot(backends, models, copies, routes, generation, versions, tombs)

    # -- data loss: generation, re-seeding, adopting what backends hold (placement.rebuild) ----------------
    @property
    def k_tombstones(self) -> str:
        return f"{self.p}:tombstones"

    async def generation(self) -> str | None:
        """The generation id, or None when Redis has none (it is new, or lost its data)."""
        self._count("read")
        raw = await self.r.get(f"{self.p}:generation")
        return _s(raw) if raw is not None else None

    async def ensure_generation(self) -> str:
        """Write a new generation id unless one exists (the first gateway to notice wins); return the current."""
        self._count("admin")
        await self.r.set(f"{self.p}:generation", secrets.token_hex(8), nx=True)
        return await self.generation() or ""

    async def seed(self, kind: str, name: str, ver: int, spec: BackendSpec | ModelSpec | RouteSpec | None) -> str:
        """Re-seed one record (`spec` None: its tombstone) unless Redis has a newer version or a newer delete:
        'seeded', 'tomb' (a tombstone written) or 'kept'. Idempotent, so every gateway that noticed may run it."""
        self._count("admin")
        own = self.k_backend(name) if kind == "backend" else self.k_model(name) if kind == "model" else ""
        own = own or f"{self.p}:routes"
        cap_models, cap_bytes = 0, -1
        if isinstance(spec, BackendSpec):
            cap_models = spec.capacity.models
            cap_bytes = spec.capacity.memory_bytes if spec.capacity.memory_bytes is not None else -1
        keys = [self.k_tombstones, f"{self.p}:backends", f"{self.p}:models", f"{self.p}:routes"]
        res = await self._seed(
            keys=[*keys, f"{self.p}:routever", own],
            args=[kind, name, ver, json.dumps(spec.to_json()) if spec else "", cap_models, cap_bytes, self.events],
        )
        return _s(res)

    async def adopt_held(self, bid: str, model: str, now: float) -> str:
        """Record a model the backend holds and Redis doesn't know as a ready copy: 'ok', 'exists', 'full',
        'unregistered' (not registered, or for another runtime) or 'gone' (no such backend)."""
        self._count("script")
        keys = [self.k_copies(bid), self.k_where(model), self.k_backend(bid), self.k_model(model), self.k_lru(bid)]
        res = await self._adopt_held(keys=[*keys, f"{self.p}:lastused"], args=[model, now, self.events, bid])
        return _s(res)

    # -- rollouts and route statistics (placement.rollout, placement.route_stats) ---------------------------
    def k_rstat(self, route: str) -> str:
        return f"{self.p}:rstat:{route}"

    def k_rollout(self, route: str) -> str:
        return f"{self.p}:rollout:{route}"

    async def flush_route_stats(self, batch: Batch) -> None:
        """Add one gateway's counts since its last flush to the cluster's sums, in one round trip."""
        if not batch:
            return
        self._count("route_stats_flush")
        async with self.r.pipeline(transaction=False) as pipe:
            for route, rc in batch.routes.items():
                key = self.k_rstat(route)
                for m, c in rc.models.items():
                    pipe.hincrby(key, f"m|{m}|req", c.requests)
                    if c.errors:
                        pipe.hincrby(key, f"m|{m}|err", c.errors)
                    for b, n in c.latency.counts.items():
                        pipe.hincrby(key, f"m|{m}|b{b}", n)
                for m, sc in rc.shadows.items():
                    for outcome, n in sc.counts.items():
                        pipe.hincrby(key, f"s|{m}|{outcome}", n)
                    for b, n in sc.primary.counts.items():
                        pipe.hincrby(key, f"s|{m}|p{b}", n)
                    for b, n in sc.shadow.counts.items():
                        pipe.hincrby(key, f"s|{m}|s{b}", n)
            for d in batch.disagreements:
                pipe.lpush(f"{self.p}:rdis:{d.route}", json.dumps(d.to_json()))
            for route in {d.route for d in batch.disagreements}:
                pipe.ltrim(f"{self.p}:rdis:{route}", 0, DISAGREEMENTS_KEPT - 1)
            await pipe.execute()

    async def route_counts(self, route: str) -> RouteCounts:
        """The cluster's sums for one route since its counts began."""
        self._count("read")
        raw = await self.r.hgetall(self.k_rstat(route))
        out = RouteCounts()
        for k, v in raw.items():
            kind, model, field_ = _s(k).split("|", 2)
            n = int(v)
            if kind == "m":
                c = out.models.setdefault(model, ModelCounts())
                if field_ == "req":
                    c.requests = n
                elif field_ == "err":
                    c.errors = n
                else:
                    c.latency.counts[int(field_[1:])] = n
            else:
                sc = out.shadows.setdefault(model, ShadowCounts())
                if field_[0] in "ps" and field_[1:].isdigit():
                    (sc.primary if field_[0] == "p" else sc.shadow).counts[int(field_[1:])] = n
                else:
                    sc.counts[field_] = n
        return out

    async def disagreements(self, route: str) -> list[dict[str, Any]]:
        self._count("read")
        raw = await self.r.lrange(f"{self.p}:rdis:{route}", 0, DISAGREEMENTS_KEPT - 1)
        return [json.loads(x) for x in raw]

    async def rollout_get(self, route: str) -> dict[str, Any] | None:
        self._count("read")
        raw = await self.r.get(self.k_rollout(route))
        return json.loads(raw) if raw else None

    async def rollout_routes(self) -> list[str]:
        self._count("read")
        return sorted(_s(r) for r in await self.r.smembers(f"{self.p}:rollouts"))

    async def rollout_write(
        self, route: str, expect_version: int | None, state: dict[str, Any], spec: RouteSpec | None
    ) -> str:
        """Write a rollout's state, and the route it sets (if any), together: 'ok', 'conflict' (someone wrote
        since `expect_version` was read), 'running' (starting while another rollout runs) or 'gone' (the route was
        deleted: it is never brought back)."""
        self._count("script")
        res = await self._rollout_write(
            keys=[self.k_rollout(route), f"{self.p}:routes", f"{self.p}:rollouts"],
            args=[
                "" if expect_version is None else str(expect_version),
                json.dumps(state),
                route,
                json.dumps(spec.to_json()) if spec is not None else "",
                self.events,
            ],
        )
        return _s(res)


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
