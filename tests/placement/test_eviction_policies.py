"""Eviction policies as pure objects with an injected clock: what each ranks first, and why."""

from __future__ import annotations

from placement.clock import FakeClock
from placement.eviction import EVICTIONS, EvictionCandidate, GreedyDualSizeFrequency, LeastRecentlyUsed

GB = 1 << 30


def cand(model: str, last_used: float, **kw: object) -> EvictionCandidate:
    return EvictionCandidate(model, "b1", last_used, **kw)  # type: ignore[arg-type]


def test_lru_ranks_the_oldest_last_use_first() -> None:
    ranked = LeastRecentlyUsed().rank([cand("a", 5.0), cand("b", 1.0), cand("c", 3.0)])
    assert [c.model for c in ranked] == ["b", "c", "a"]


def test_every_named_policy_is_built_with_a_clock() -> None:
    clock = FakeClock(0.0)
    assert {name: make(clock).name for name, make in EVICTIONS.items()} == {"lru": "lru", "gdsf": "gdsf"}


def test_gdsf_keeps_the_frequent_model_over_the_recent_newcomer() -> None:
    clock = FakeClock(100.0)
    gd = GreedyDualSizeFrequency(clock)
    hot = cand("hot", 90.0, requests=50, loaded_at=10.0, load_seconds=1.0)
    newcomer = cand("new", 99.0, requests=1, loaded_at=98.0, load_seconds=1.0)
    # LRU would evict hot (older last use); GDSF evicts the model seen once (probation).
    assert LeastRecentlyUsed().rank([hot, newcomer])[0].model == "hot"
    assert gd.rank([hot, newcomer])[0].model == "new"


def test_gdsf_weighs_load_cost_and_size() -> None:
    gd = GreedyDualSizeFrequency(FakeClock(100.0))
    cheap = cand("cheap", 50.0, requests=4, memory_bytes=GB, load_seconds=0.2, loaded_at=1.0)
    dear = cand("dear", 50.0, requests=4, memory_bytes=GB, load_seconds=3.0, loaded_at=1.0)
    big = cand("big", 50.0, requests=4, memory_bytes=8 * GB, load_seconds=3.0, loaded_at=1.0)
    assert [c.model for c in gd.rank([dear, big, cheap])] == ["cheap", "big", "dear"]
    # Never measured: a default cost, so an unmeasured model is not evicted just for being unknown.
    assert gd.value(cand("x", 0.0, requests=4)) == 4 * gd.default_cost


def test_gdsf_ages_models_that_stopped_being_used() -> None:
    clock = FakeClock(0.0)
    gd = GreedyDualSizeFrequency(clock, min_residency=0.0)
    old_hot = cand("old", 0.9, requests=10, load_seconds=1.0, loaded_at=0.5)
    # Evictions of other copies raise the policy's clock L past old_hot's frozen priority (L=0 + 10).
    for i in range(12):
        clock.advance(1.0)
        victim = cand(f"v{i}", clock.now(), requests=1, load_seconds=1.0, loaded_at=clock.now())
        gd.evicted(victim)  # each H = L + 1: the clock steps up by one
    assert gd.inflation == 12.0
    fresh = cand("fresh", clock.now(), requests=1, load_seconds=1.0, loaded_at=clock.now() - 5)
    assert gd.score(fresh) == 13.0 and gd.score(old_hot) == 10.0
    assert gd.rank([fresh, old_hot])[0].model == "old"


def test_gdsf_keeps_a_copy_within_its_minimum_residency_unless_nothing_else_can_go() -> None:
    clock = FakeClock(100.0)
    gd = GreedyDualSizeFrequency(clock, min_residency=2.0)
    young = cand("young", 0.0, requests=1, loaded_at=99.5)
    settled = cand("settled", 99.9, requests=30, loaded_at=50.0)
    assert [c.model for c in gd.rank([young, settled])] == ["settled", "young"]
    clock.advance(2.0)
    assert [c.model for c in gd.rank([young, settled])] == ["young", "settled"]
