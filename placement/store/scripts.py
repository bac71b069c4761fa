"""Every Lua script of `placement.store` (its docstring has the key layout): each is one step that must not
interleave with another gateway's. Only EVAL/EVALSHA and cjson, so Redis 6.2, 7.x and Valkey all run them."""

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
