"""A Triton SIGKILLed under traffic and restarted empty; slow and dropped connections to Redis and to a Triton."""

from __future__ import annotations

import time

from tests.faults.conftest import CAPACITY, MODELS, FaultStack, offset, wait_for
from tests.faults.recorder import CapacitySampler, Traffic

THREADS = 2


def test_triton_killed_then_restarted_empty(faults: FaultStack) -> None:
    s = faults
    a, b = s.add_gateway(), s.add_gateway()
    s.register()
    models = MODELS[:2]  # both fit on the survivor: what clients see is the fault, not eviction churn
    s.warm(*models)
    with CapacitySampler(s.tritons) as sampler, Traffic([a.url, b.url], models, offset, threads=THREADS) as t:
        t.wait_requests(20)
        victim = s.tritons[1]
        victim.kill()
        killed = time.monotonic()
        # the dead server's copies leave the placement
        wait_for("dead copies dropped", lambda: not any(s.placement_ready(gw)["triton-1"] for gw in s.gateways))
        dropped = time.monotonic() - killed
        t.wait_requests(30)
        victim.start()
        took = s.wait_accounting(30)
        t.wait_requests(20)
    s.fresh_gateway_agrees(models)
    c = t.counts
    print(f"\ntriton killed: {c}; dead copies dropped after {dropped:.1f} s; whole {took:.1f} s after restart")
    assert all(p <= CAPACITY for p in sampler.peak), sampler.peak
    assert c.bad == 0, c.examples
    # each client honours Retry-After (1 s): about one 503 per second per client while the dead copies are still
    # listed, then one load elsewhere
    bound = THREADS * (dropped + 3)
    assert c.retriable <= bound, (c, bound)


def test_slow_and_dropped_redis_connections(faults: FaultStack) -> None:
    s = faults
    proxy = s.proxy(s.redis.port)
    via = f"redis://{proxy.address}/0"
    a, b = s.add_gateway(via), s.add_gateway(via)
    s.register()
    s.warm(*MODELS[:2])
    with CapacitySampler(s.tritons) as sampler, Traffic([a.url, b.url], MODELS[:2], offset) as t:
        t.wait_requests(20)
        proxy.latency(0.3)
        t.wait_requests(20)
        proxy.forward()
        proxy.cut()
        t.wait_requests(20)
        proxy.refuse()
        proxy.cut()
        t.wait_requests(20)
        proxy.blackhole()
        t.wait_requests(20)
        time.sleep(2.0)  # the fault's own duration: Redis unanswering 2 s
        proxy.forward()
        proxy.cut()
        took = s.wait_accounting(20)
        t.wait_requests(20)
    print(f"\nredis proxy faults: {t.counts}; whole {took:.1f} s after the link healed")
    assert all(p <= CAPACITY for p in sampler.peak), sampler.peak
    assert t.counts.bad == 0, t.counts.examples
    assert t.counts.retriable == 0, t.counts


def test_slow_and_dropped_triton_connections(faults: FaultStack) -> None:
    s = faults
    proxy = s.proxy(s.tritons[0].http_port)
    a, b = s.add_gateway(), s.add_gateway()
    s.register(urls=[f"http://{proxy.address}", s.tritons[1].url])
    models = MODELS[:3]
    s.warm(*models)
    with CapacitySampler(s.tritons) as sampler, Traffic([a.url, b.url], models, offset) as t:
        t.wait_requests(20)
        proxy.latency(0.2)
        t.wait_requests(20)
        proxy.forward()
        proxy.cut()
        t.wait_requests(20)
        proxy.refuse()
        t.wait_requests(30)
        proxy.forward()
        took = s.wait_accounting(30)
        t.wait_requests(20)
    print(f"\ntriton proxy faults: {t.counts}; whole {took:.1f} s after the link healed")
    assert all(p <= CAPACITY for p in sampler.peak), sampler.peak
    assert t.counts.bad == 0, t.counts.examples
    assert t.counts.retriable <= 15, t.counts
