"""loadtests.prewarm_real: the slice it picks, the schedule it sends, what it reads back (the real run itself is
`make bench-prewarm`)."""

from __future__ import annotations

import itertools

import pytest

from loadtests.prewarm_real import (
    IRREGULAR,
    PERIODIC,
    TIMER,
    compress,
    kind,
    parse_args,
    pick,
    predict,
    schedule,
    the_slice,
    waiting,
)
from loadtests.realstack import gap_check, prewarm_counters
from loadtests.sim.trace import azure_dir


def test_kinds_schedule_and_compression() -> None:
    assert kind([1] * 10) == TIMER
    assert kind([1, 0, 0] * 4) == PERIODIC
    assert kind([0] * 6 + [1, 0, 1, 0, 1, 0]) is None  # a timer that starts midway is not periodic over the slice
    assert kind([1, 0, 2, 0, 0, 1, 1]) == IRREGULAR
    assert kind([5, 1, 1]) is None and kind([1, 0, 0, 0, 0, 0, 1]) is None  # too busy; too sparse
    counts = {"t1": [1] * 10, "t2": [1] * 10, "p1": [0, 1] * 5, "i1": [1, 2, 0, 0, 1, 0, 0, 0, 1, 0], "busy": [9] * 10}
    kinds = pick(counts, 0, 10, {TIMER: 1, PERIODIC: 1, IRREGULAR: 1}, seed=3)
    assert sorted(kinds.values()) == sorted([TIMER, PERIODIC, IRREGULAR]) and "busy" not in kinds
    assert pick(counts, 0, 10, {TIMER: 1, PERIODIC: 1, IRREGULAR: 1}, seed=3) == kinds  # seeded
    with pytest.raises(SystemExit):
        pick(counts, 0, 10, {TIMER: 3}, seed=1)
    reqs = schedule(counts, ["t1", "i1"], 0, 10, seed=1)
    assert len(reqs) == 10 + 5 and reqs == sorted(reqs)
    timer = [t for t, m in reqs if m == "t1"]
    assert all(abs(b - a - 60.0) < 1e-9 for a, b in itertools.pairwise(timer))  # a timer fires each minute
    two = [t for t, m in reqs if m == "i1" and 60.0 <= t < 120.0]
    assert len(two) == 2 and abs(abs(two[1] - two[0]) - 30.0) < 1e-9  # two in a minute: 30 s apart
    fast = compress(reqs, 6.0)
    assert [m for _, m in fast] == [m for _, m in reqs] and fast[-1][0] == pytest.approx(reqs[-1][0] / 10, abs=1e-3)


def test_what_is_measured_and_predicted() -> None:
    rows = [{"s": 0.01, "cold": 0, "late": 0.0}, {"s": 0.03, "cold": 0, "late": 0.2}, {"s": 2.02, "cold": 1, "late": 0}]
    w = waiting(rows)
    assert w["warm_ms_median"] == 20.0 and w["wait_s"] == pytest.approx(2.01) and w["cold_requests"] == 1
    assert w["late_s_max"] == 0.2
    text = (
        "# HELP modelyard_prewarm_loads_total Pre-warms\n"
        'modelyard_prewarm_loads_total{result="loaded"} 7.0\nmodelyard_prewarm_loads_total{result="used"} 3.0\n'
        'modelyard_prewarm_loads_created{result="used"} 1.7e9\n'
    )
    assert prewarm_counters(text) == {"loaded": 7, "used": 3}
    reqs = [(0.0, "a"), (8.0, "a"), (16.0, "a"), (3.0, "b")]
    check = gap_check(reqs, {"a": 2.0, "b": 0.05})
    assert check["asked_once"] == ["b"] and check["under_half"] == ["a"]
    assert gap_check(reqs, {"a": 7.9})["under_half"] == []
    args = parse_args(["--timers", "1", "--periodic", "1", "--irregular", "1", "--tritons", "1", "--slots", "1"])
    pred = predict([(float(i), "ab"[i % 2]) for i in range(0, 40, 4)] + [(41.0, "c")], args, 1.0)
    assert pred["nextuse"]["misses"] >= pred["belady"]["misses"] and "prewarm_loads" in pred["nextuse+prewarm"]
    for bad in (["--runs", "maybe"], ["--slots", "30"], ["--eviction", "fifo"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.mark.skipif(azure_dir() is None, reason="the Azure trace (../shared/traces/azure-functions-2019) is absent")
def test_the_default_slice_of_the_azure_trace() -> None:
    args = parse_args([])
    kinds, reqs = the_slice(args)
    assert len(kinds) == args.timers + args.periodic + args.irregular == len({m for _, m in reqs})
    assert max(t for t, _ in reqs) < args.minutes * args.seconds_per_minute
    assert the_slice(args) == (kinds, reqs)
