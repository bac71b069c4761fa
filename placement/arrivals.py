"""Learning each model's arrivals: a moving average of the idle time between its requests.

Gateways learn it from their batched usage writes (`RedisStore.touch_many`, never on the warm path): a model
last used anywhere at `prev` and seen again, `n` requests later, at `when` had a mean gap of
`(when - prev) / n` over that stretch. The same update runs in Lua there and in the simulator here.
"""

from __future__ import annotations

WEIGHT = 0.3  # how far one new observation moves the average


def update_gap(old: float | None, prev: float | None, when: float, n: int) -> float | None:
    """The new mean gap after `n` requests up to `when`, the previous one being at `prev` (None: first seen)."""
    if prev is None or n <= 0 or when <= prev:
        return old
    gap = (when - prev) / n
    return gap if old is None else (1 - WEIGHT) * old + WEIGHT * gap


def remaining(mean_gap: float, idle: float) -> float:
    """Expected seconds until a model idle for `idle` seconds is asked for again. Before its usual gap is over,
    the rest of that gap; once overdue, as long again as it has been idle (it is slowing down)."""
    if mean_gap <= 0:  # seen once: no pattern yet
        return 2 * max(idle, 1.0)
    return max(mean_gap - idle, idle)


def keep_value(load_seconds: float, memory_bytes: int, remaining_seconds: float) -> float:
    """What holding a copy is worth: the load it saves per byte-second held until its next request (higher is
    kept). Unknown cost counts as 1 s, unknown size as 1 GiB."""
    cost = load_seconds if load_seconds > 0 else 1.0
    size = memory_bytes / float(1 << 30) if memory_bytes > 0 else 1.0
    return cost / (max(1e-3, remaining_seconds) * size)
