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
    p:modelsver                INCR counter bumped by every write of a model's spec (put, delete, re-seed): a
                               view's periodic resync re-reads the models only when it (or their count) moved

Versions are wall-clock milliseconds of the writing gateway: a re-seed after data loss keeps, per record, the
highest version among what Redis has and what each gateway's view offers, deletes (tombstones) included.

Rollouts and route statistics (`placement.store.rollouts`, `placement.rollout`, `placement.route_stats`):

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

The package splits by concept: `scripts` (every Lua script), `base` (client, prefix, key names, codecs), and one
mixin per concept that `RedisStore` assembles: `registry`, `copies`, `leases`, `usage`, `rollouts`, `rebuild`.
"""

from __future__ import annotations

from placement.store.base import version
from placement.store.copies import Copies
from placement.store.leases import Leases
from placement.store.rebuild import Rebuild
from placement.store.registry import ModelsMark, Registry, Snapshot
from placement.store.rollouts import Rollouts
from placement.store.usage import Usage

__all__ = ["ModelsMark", "RedisStore", "Snapshot", "version"]


class RedisStore(Registry, Copies, Leases, Usage, Rollouts, Rebuild):
    """Typed access to modelyard's Redis. One per gateway; it does no I/O until called."""
