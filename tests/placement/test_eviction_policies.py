"""Eviction policies as pure objects with an injected clock: what each ranks first, and why."""

from __future__ import annotations

import pytest

from placement.arrivals import WEIGHT, ahead, remaining, update_gap
from placement.clock import FakeClock
from placement.eviction import (
    EVICTIONS,
    EvictionCandidate,
    GreedyDualSizeFrequency,
    LeastRecentlyUsed,
    PredictedNextUse,
)
from placement.prewarm import Prewarmer, prewarm_candidate

GB = 1 << 30


def cand(model: str, last_used: float, **kw: object) -> EvictionCandidate:
    return EvictionCandidate(model, "b1", last_used, **kw)  # type: ignore[arg-type]


def test_lru_ranks_the_oldest_last_use_first() -> None:
    ranked = LeastRecentlyUsed().rank([cand("a", 5.0), cand("b", 1.0), cand("c", 3.0)])
    assert [c.model for c in ranked] == ["b", "c", "a"]


def test_every_named_policy_is_built_with_a_clock() -> None:
    clock = FakeClock(0.0)
    assert {name: make(clock).name for name, make in EVICTIONS.items()} == {
        "lru": "lru",
        "gdsf": "gdsf",
        "nextuse": "nextuse",
    }


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


def test_the_mean_gap_learns_from_batches_and_ignores_what_says_nothing() -> None:
    assert update_gap(None, None, 5.0, 1) is None  # first request: no gap yet
    assert update_gap(None, 0.0, 10.0, 1) == 10.0
    assert update_gap(None, 0.0, 10.0, 5) == 2.0  # five requests in one flush of ten seconds
    assert update_gap(10.0, 0.0, 20.0, 1) == pytest.approx((1 - WEIGHT) * 10 + WEIGHT * 20)
    assert update_gap(4.0, 9.0, 9.0, 1) == 4.0 and update_gap(4.0, 1.0, 9.0, 0) == 4.0


def test_remaining_time_is_the_usual_gap_lengthened_by_idleness_and_a_prewarm_counts_down() -> None:
    assert remaining(60.0, 10.0) == 62.5  # memoryless: the usual gap, a little more for the idle time
    assert remaining(60.0, 90.0) == 82.5 > remaining(60.0, 10.0)  # idle long: the rate may have dropped
    assert remaining(0.0, 0.2) == 8.0 and remaining(0.0, 30.0) == 240.0  # seen once: probation
    assert ahead(60.0, 55.0) == 5.0 and ahead(60.0, 70.0) == 10.0  # a pre-warm's request: due, then overdue


def test_nextuse_evicts_the_copy_predicted_to_be_asked_for_last() -> None:
    clock = FakeClock(1000.0)
    nu = PredictedNextUse(clock)
    # Called every 60 s, last 50 s ago: due in 10 s. Called every 5 s, last 1 s ago: due in 4 s.
    # Called every 600 s, last 10 s ago: due in 590 s: the one to go, although LRU would evict the first.
    minute = cand("minute", 950.0, mean_gap=60.0, loaded_at=1.0)
    busy = cand("busy", 999.0, mean_gap=5.0, loaded_at=1.0)
    hourly = cand("hourly", 990.0, mean_gap=600.0, loaded_at=1.0)
    assert [c.model for c in nu.rank([minute, busy, hourly])] == ["hourly", "minute", "busy"]
    # Size and cost weigh in: a copy four times the size holds four times the bytes for the same wait.
    big = cand("big", 950.0, mean_gap=60.0, loaded_at=1.0, memory_bytes=4 * GB, load_seconds=1.0)
    small = cand("small", 990.0, mean_gap=120.0, loaded_at=1.0, memory_bytes=GB, load_seconds=1.0)
    assert nu.rank([small, big])[0].model == "big"
    assert nu.rank([small, big, cand("young", 0.0, loaded_at=999.9)])[-1].model == "young"


def test_nextuse_keeps_a_prewarmed_copy_for_the_request_it_was_loaded_for_but_not_after() -> None:
    clock = FakeClock(1000.0)
    nu = PredictedNextUse(clock)
    # Called every 60 s, last at 950, pre-warmed at 998: its request is due in 10 s; a model called every 30 s,
    # used 1 s ago, is expected in about 30 s: it goes first.
    warm = cand("warm", 950.0, mean_gap=60.0, loaded_at=998.0, last_request=950.0)
    recent = cand("recent", 999.0, mean_gap=30.0, loaded_at=500.0, last_request=999.0)
    assert [c.model for c in nu.rank([warm, recent])] == ["recent", "warm"]
    # Not knowing the model's last request (0), the same copy is just a copy idle since its load.
    blind = cand("warm", 998.0, mean_gap=60.0, loaded_at=998.0)
    assert nu.rank([blind, recent])[0].model == "warm"
    # Its request 40 s overdue: the caller may have stopped; it goes first.
    clock.t = 1050.0
    stale = cand("warm", 950.0, mean_gap=60.0, loaded_at=998.0, last_request=900.0)
    assert (
        nu.rank([stale, cand("recent", 1049.0, mean_gap=30.0, loaded_at=500.0, last_request=1049.0)])[0].model == "warm"
    )
    # What a pre-warm is worth is the score of such a copy loaded now.
    assert nu.score(prewarm_candidate("m", 1000.0, 60.0, 1.0, GB, 1050.0)) == pytest.approx(1.0 / 10.0)


def test_prewarm_is_due_before_the_expected_request_and_gives_up_after_repeated_misses() -> None:
    pw = Prewarmer(lead=2.0, max_misses=2, min_gap=5.0)
    assert pw.due_at("m", last_used=100.0, mean_gap=60.0, load_seconds=1.5) == 100.0 + 60 - 2 - 1.5
    assert pw.due_at("busy", 100.0, 1.0, 1.5) is None  # frequent models are eviction's business
    assert pw.due_at("new", 100.0, 0.0, 1.5) is None  # no pattern learned yet
    pw.started("m")
    pw.served("m")  # used: a hit, misses reset
    for _ in range(2):
        pw.started("m")
        pw.evicted("m")  # evicted unused: a miss
    assert pw.due_at("m", 200.0, 60.0, 1.5) is None
    pw.evicted("other")  # not pre-warmed: nothing to count
    assert (pw.stats.loads, pw.stats.used, pw.stats.wasted, pw.stats.given_up) == (3, 1, 2, 1)


def test_a_given_up_model_is_tried_again_after_a_pause_that_doubles_while_it_keeps_missing() -> None:
    pw = Prewarmer(lead=2.0, max_misses=2, retry_after=600.0, max_retry_after=1000.0)

    def miss() -> None:
        pw.started("m")
        pw.evicted("m")

    miss(), miss()
    assert pw.due_at("m", 100.0, 60.0, 1.0) is None  # given up; the pause counts from this last use
    assert pw.due_at("m", 699.0, 60.0, 1.0) is None
    assert pw.due_at("m", 700.0, 60.0, 1.0) == 757.0 and pw.stats.retried == 1
    miss()  # one miss after the retry gives it up again, for twice as long (capped)
    assert pw.due_at("m", 800.0, 60.0, 1.0) is None
    assert pw.due_at("m", 1799.0, 60.0, 1.0) is None and pw.due_at("m", 1800.0, 60.0, 1.0) is not None
    pw.started("m")
    pw.served("m")  # used: everything is forgotten
    miss()
    assert pw.due_at("m", 1900.0, 60.0, 1.0) is not None and pw.stats.given_up == 2
