"""Learning each model's arrivals: a moving average of the idle time between its requests.

Gateways learn it from their batched usage writes (`RedisStore.touch_many`, never on the warm path): a model
last used anywhere at `prev` and seen again, `n` requests later, at `when` had a mean gap of
`(when - prev) / n` over that stretch. The same update runs in Lua there and in the simulator here.
"""

from __future__ import annotations

WEIGHT = 0.1  # how far one new observation moves the average (about the last ten gaps count)


def update_gap(old: float | None, prev: float | None, when: float, n: int) -> float | None:
    """The new mean gap after `n` requests up to `when`, the previous one being at `prev` (None: first seen)."""
    if prev is None or n <= 0 or when <= prev:
        return old
    gap = (when - prev) / n
    return gap if old is None else (1 - WEIGHT) * old + WEIGHT * gap


SLOWING = 4.0  # every this many seconds idle add one second to the expected wait (the rate may have dropped)
NEWCOMER = 8.0  # a model seen once is expected back this many times its idle time later (probation)


def remaining(mean_gap: float, idle: float) -> float:
    """Expected seconds until a model idle for `idle` seconds is asked for again: its usual gap, as if arrivals
    were memoryless, lengthened as its idleness says its rate may have dropped (`idle / SLOWING`: the posterior
    mean gap of a Poisson rate estimated from a few gaps, after `idle` seconds without one). Measured against
    Zipf and the Azure trace, this ranks better than the rest of the gap (`mean_gap - idle`), which keeps a
    model that has just been used as if its next request were due: most callers are not clocks."""
    if mean_gap <= 0:  # seen once: no pattern yet
        return NEWCOMER * max(idle, 1.0)
    return mean_gap + idle / SLOWING


def ahead(mean_gap: float, since_request: float) -> float:
    """Expected seconds until the request a pre-warmed copy was loaded for, `since_request` seconds after the
    model's last request: the rest of its usual gap (a pre-warm is made for a clock-like caller); once that is
    past, as long as it is overdue (the caller may have stopped)."""
    return abs(mean_gap - since_request)


def keep_value(load_seconds: float, memory_bytes: int, remaining_seconds: float) -> float:
    """What holding a copy is worth: the load it saves per byte-second held until its next request (higher is
    kept). Unknown cost counts as 1 s, unknown size as 1 GiB."""
    cost = load_seconds if load_seconds > 0 else 1.0
    size = memory_bytes / float(1 << 30) if memory_bytes > 0 else 1.0
    return cost / (max(1e-3, remaining_seconds) * size)
