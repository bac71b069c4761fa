"""loadtests.eviction_real: its arguments and the sequence it sends (the real run itself is `make bench-eviction`)."""

from __future__ import annotations

import pytest

from loadtests.eviction_real import commit_gaps_misses, parse_args, predict, sequence, sim_cold, timed_trace


def test_arguments_and_the_sequence_match_the_simulators_trace() -> None:
    args = parse_args(["--models", "10", "--requests", "30", "--tritons", "1", "--slots", "2", "--policies", "lru"])
    assert args.policies == ["lru"]
    models, seq = sequence(args)
    assert len(models) == 10 and len(seq) == 30 and set(seq) <= set(models)
    assert sequence(args) == (models, seq)  # seeded: every policy gets the same sequence
    trace = timed_trace("t", [float(i) for i in range(len(seq))], seq, models, 0.5)
    paced = predict(trace, args)
    assert paced["belady"]["misses"] <= paced["lru"]["misses"] <= len(seq)
    # the request-by-request view counts the same misses as the simulator's own run
    assert sum(sim_cold(trace, 1, 2, "lru")) == paced["lru"]["misses"]
    assert commit_gaps_misses(trace, 1, 2, "lru") == paced["lru"]["misses"]  # the gap rule touches only gaps
    for bad in (["--policies", "fifo"], ["--models", "4", "--tritons", "2", "--slots", "2"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
