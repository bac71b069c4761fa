"""Placement settings: built once in the gateway's `main()` and passed in; nothing is read from the environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlacementSettings:
    redis_prefix: str = "modelyard"
    load_timeout: float = 120.0  # how long a request waits for a cold load before 503
    lease_ttl: float = 15.0  # a load lease expires this long after its last renewal
    usage_flush_interval: float = 0.5  # how often last-used times go to Redis
    resync_interval: float = 30.0  # full re-read of the registry, in case a pub/sub message was lost
    health_interval: float = 2.0  # how often each backend's health is checked
    health_failures: int = 3  # failed checks in a row before a known backend is taken out of rotation
    reconcile_interval: float = 10.0  # how often backends' real contents are compared with Redis
    stuck_after: float = 90.0  # an unload or load this old with nobody on it is finished by reconciliation
    failure_backoff: float = 1.0  # first delay after a failed load; doubles per failure
    failure_backoff_max: float = 60.0
    wait_poll: float = 0.25  # longest wait between looks when waiting for another gateway's load or a slot
    # Copies that follow demand (placement.scaling): a model gets one more copy (up to max_copies) when its
    # requests per second per ready copy pass `scale_up_rate` (0: never); one fewer (down to min_copies, at
    # least 1) when, with one copy fewer, the rate per copy would stay under scale_up_rate * scale_down_ratio for
    # `scale_down_rounds` reconcile rounds in a row.
    scale_up_rate: float = 100.0
    scale_down_ratio: float = 0.5
    scale_down_rounds: int = 3
    backend_chooser: str = "most-free"
    eviction_policy: str = "lru"  # a name in placement.eviction.EVICTIONS; `modelyard serve` defaults to nextuse
    # Pre-warming (placement.prewarm_task): off in the library, on in `modelyard serve` (docs/benchmarks.md).
    prewarm: bool = False
    prewarm_interval: float = 0.5  # seconds between the pre-warm leader's looks at who is due
