"""Redis killed, restarted with its data or empty, and paused, under warm and cold traffic through two gateways."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import CAPACITY, MODELS, FaultStack, offset
from tests.faults.recorder import CapacitySampler, Counts, Traffic

WARM = MODELS[:2]
COLD = MODELS[2:8]
# seconds a cold client waits for an answer: a load takes about 1.5 s here, so a cold request that hangs on a
# paused Redis (10 s) is counted bad, while a prompt 503 is retriable
COLD_DEADLINE = 8.0


def run_outage(s: FaultStack, fault: str) -> tuple[Counts, Counts, float, float]:
    """Warm and cold traffic through two gateways across one Redis fault; returns (warm, cold, seconds from Redis
    answering until cold requests succeed again and then the gateways' accounting equals the Tritons, seconds a
    fresh gateway took to agree once ready)."""
    a, b = s.add_gateway(), s.add_gateway()
    s.register()
    s.warm(*WARM)
    urls = [a.url, b.url]
    with CapacitySampler(s.tritons) as sampler:
        with (
            Traffic(urls, WARM, offset) as warm,
            Traffic(urls, COLD, offset, threads=1, deadline=COLD_DEADLINE) as cold,
        ):
            warm.wait_requests(20)
            if fault == "pause":
                s.redis.pause()
                warm.wait_requests(20)
                time.sleep(10.0)  # the fault's own duration, the 10 s: longer than a cold request's deadline
                s.redis.resume()
            else:
                s.redis.kill()
                if fault == "empty":
                    s.redis.wipe()
                warm.wait_requests(40)  # warm traffic keeps flowing while Redis is gone
                cold.wait_requests(2)  # and cold requests get answered (a prompt 503), not hung
                s.redis.start()
            back = time.monotonic()
            cold.wait_ok(2)  # the cold path works again
            cold.stop()  # loads and evictions settle, so the Tritons' index holds still for the comparison
            s.wait_accounting(30)
            took = time.monotonic() - back
            warm.wait_requests(20)
        fresh = s.fresh_gateway_agrees(WARM)
    assert all(p <= CAPACITY for p in sampler.peak), f"capacity exceeded: {sampler.peak}"
    return warm.counts, cold.counts, took, fresh


@pytest.mark.parametrize("fault", ["with-data", "empty", "pause"])
def test_redis_fault_under_traffic(faults: FaultStack, fault: str) -> None:
    warm, cold, took, fresh = run_outage(faults, fault)
    print(
        f"\nredis {fault}: warm {warm}; cold {cold}; accounting whole {took:.1f} s after Redis answered, "
        f"a fresh gateway agreed {fresh:.1f} s after its start"
    )
    assert warm.bad == 0, warm.examples
    assert warm.retriable == 0, "warm models are served from the view during an outage"
    assert cold.bad == 0, cold.examples
    assert cold.ok > 0
    # a cold request during the outage gets a prompt 503; the client honours Retry-After (capped at 1 s), so
    # one client makes about one retriable request per second of outage
    assert cold.retriable <= 20, cold
