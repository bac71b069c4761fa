"""The simulator (loadtests/sim) drives the real policies: exact counts on a hand-made trace, and the comparison
on a small synthetic one (behaviour, not wall time)."""

from __future__ import annotations

import dataclasses

import pytest

from loadtests.sim.engine import Backend, Simulation
from loadtests.sim.run import simulate, split
from loadtests.sim.trace import Trace, azure_dir, azure_trace, lognormal_sizes, uniform_costs, zipf_trace
from placement.clock import FakeClock
from placement.eviction import EvictionCandidate, GreedyDualSizeFrequency, PredictedNextUse
from placement.policy import MostFreeFirst
from placement.prewarm import Prewarmer


def tiny(order: str) -> Trace:
    requests = [(10.0 * i, m) for i, m in enumerate(order)]
    return Trace("tiny", requests, dict.fromkeys(order, 1), dict.fromkeys(order, 1.0))


def test_lru_and_belady_count_exactly_what_the_textbook_says() -> None:
    # Two slots; a b c a b: LRU evicts a for c, then b for a, then c for b: 5 loads. MIN keeps a: 4.
    trace = tiny("abcab")
    one = [Backend("b1", 2)]
    lru, belady = simulate(trace, one, "lru"), simulate(trace, one, "belady")
    assert (lru.misses, lru.evictions, belady.misses) == (5, 3, 4)
    assert lru.load_seconds == 5.0 and lru.wait_seconds == 5.0


def test_a_request_for_a_loading_model_waits_for_that_load_without_another() -> None:
    trace = Trace("join", [(0.0, "a"), (0.4, "a"), (5.0, "a")], {"a": 1}, {"a": 1.0})
    r = simulate(trace, [Backend("b1", 1)], "lru")
    assert (r.misses, r.waited) == (1, 2) and r.wait_seconds == pytest.approx(1.6)


def test_byte_capacity_is_respected_across_backends() -> None:
    trace = zipf_trace(1.0, models=100, requests=3000, sizes=lognormal_sizes, costs=uniform_costs, seed=3)
    backends = split(2, None, sum(trace.sizes.values()) // 4)
    clock = FakeClock(0.0)
    sim = Simulation(trace, backends, MostFreeFirst(), GreedyDualSizeFrequency(clock), clock)
    for t, model in trace.requests:
        sim._advance(t)
        sim.request(model)
        assert sim.result.evictions > 0 or len(sim.copies) < 100
        for b in backends:
            held = [m for m, c in sim.copies.items() if c.backend == b.name]
            assert sum(trace.sizes[m] for m in held) == sim.used[b.name][1] <= (b.memory_bytes or 0)


def test_the_learned_policies_beat_lru_and_stay_above_the_oracles_on_a_small_zipf_trace() -> None:
    equal = zipf_trace(1.0, models=300, requests=20_000, rate=5.0, seed=2)
    r = {p: simulate(equal, split(2, 30), p) for p in ("lru", "gdsf", "nextuse", "belady")}
    assert r["belady"].misses < r["gdsf"].misses < 0.95 * r["lru"].misses
    assert r["belady"].misses < r["nextuse"].misses < 0.95 * r["lru"].misses
    sized = zipf_trace(1.0, models=300, requests=20_000, rate=5.0, sizes=lognormal_sizes, costs=uniform_costs, seed=2)
    cap = split(2, None, sum(sized.sizes.values()) // 10)
    s = {p: simulate(sized, cap, p) for p in ("lru", "gdsf", "nextuse", "belady-size")}
    assert s["belady-size"].load_seconds < s["gdsf"].load_seconds < 0.95 * s["lru"].load_seconds
    assert s["belady-size"].load_seconds < s["nextuse"].load_seconds < 0.95 * s["lru"].load_seconds


def test_the_azure_trace_reads_when_present() -> None:
    where = azure_dir()
    if where is None:
        pytest.skip("the Azure trace is absent (../shared/traces/azure-functions-2019): not in the repository")
    trace = azure_trace(where, minutes=2)
    assert trace.requests and all(0 <= t < 120 for t, _ in trace.requests)
    assert all(trace.costs[m] == pytest.approx(0.2 + trace.sizes[m] / (1 << 30)) for m in trace.sizes)


def test_prewarming_in_the_simulator_serves_periodic_models_from_copies_loaded_ahead() -> None:
    # Two models called every 30 s, a stream of one-off models between them, room for two copies.
    reqs = [(30.0 * k, "tick") for k in range(40)] + [(30.0 * k + 10, "tock") for k in range(40)]
    reqs += [(30.0 * k + 20 + j, f"x{k}-{j}") for k in range(40) for j in range(3)]
    reqs.sort()
    names = {m for _, m in reqs}
    trace = Trace("periodic", reqs, dict.fromkeys(names, 1), dict.fromkeys(names, 1.0))
    off, on = simulate(trace, [Backend("b1", 2)], "lru"), simulate(trace, [Backend("b1", 2)], "lru+prewarm")
    # Off: all 200 requests wait. On: the 120 one-offs still do, the periodic ones (but their first calls) don't,
    # and since each pre-warm replaces a demand load, no more loading is done.
    assert off.waited == 200 and 120 <= on.waited <= 126 and on.extra["prewarm_used"] == on.extra["prewarm_loads"]
    assert on.load_seconds == off.load_seconds


def test_a_prewarmed_copy_outlives_busier_models_until_the_request_it_was_loaded_for() -> None:
    # Two slots. "tick" is called every 30 s; "busy" every 4 s (too often to pre-warm) from 2 s to 26 s after it;
    # a one-off model arrives 29 s after each tick and needs a slot: between the busy copy (due in ~5 s) and the
    # pre-warmed tick (due in 1 s), nextuse evicts busy, as the pre-warmed copy counts down to its request.
    reqs = [(30.0 * k, "tick") for k in range(20)] + [(30.0 * k + 29, f"x{k}") for k in range(20)]
    reqs += [(30.0 * k + 2 + 4 * j, "busy") for k in range(20) for j in range(7)]
    reqs.sort()
    names = {m for _, m in reqs}
    trace = Trace("countdown", reqs, dict.fromkeys(names, 1), dict.fromkeys(names, 1.0))
    on = simulate(trace, [Backend("b1", 2)], "nextuse+prewarm")
    # Every pre-warm is used but the last, made for a request after the trace's end.
    assert on.extra["prewarm_loads"] >= 17 and on.extra["prewarm_used"] == on.extra["prewarm_loads"] - 1

    class Blind(Simulation):
        """The candidates without the model's last request: a pre-warmed copy looks idle since its load."""

        def candidates(self) -> list[EvictionCandidate]:
            return [
                dataclasses.replace(c, last_request=0.0, last_used=max(c.last_used, c.loaded_at))
                for c in super().candidates()
            ]

    clock = FakeClock(0.0)
    blind = Blind(trace, [Backend("b1", 2)], MostFreeFirst(), PredictedNextUse(clock), clock, Prewarmer()).run()
    assert blind.extra["prewarm_used"] <= 2 < blind.extra["prewarm_loads"] and blind.waited > on.waited
