"""Sequence affinity: the choice of copy, pins, idle expiry and the error when a pinned copy is gone."""

from __future__ import annotations

import pytest

from placement.affinity import SequenceAffinity, SequenceFlags, SequenceLost, rendezvous
from placement.clock import FakeClock


def test_gateways_agree_and_adding_a_copy_moves_few_sequences() -> None:
    ids = [str(i) for i in range(400)]
    two = {s: rendezvous("m", s, ["t1", "t2"]) for s in ids}
    assert two == {s: rendezvous("m", s, ["t2", "t1"]) for s in ids}  # order of the view does not matter
    assert 120 < sum(b == "t1" for b in two.values()) < 280
    three = {s: rendezvous("m", s, ["t1", "t2", "t3"]) for s in ids}
    moved = [s for s in ids if three[s] != two[s]]
    assert all(three[s] == "t3" for s in moved)  # only to the new copy
    assert 60 < len(moved) < 210


def test_a_sequence_stays_pinned_until_its_end_or_idle_timeout() -> None:
    clock = FakeClock()
    aff = SequenceAffinity(clock, idle_timeout=60)
    start = aff.choose("m", SequenceFlags("7", start=True), ["t1", "t2"])
    assert start is not None
    other = "t2" if start == "t1" else "t1"
    # A copy added since the start does not move the sequence on this gateway.
    for _ in range(3):
        clock.advance(50)
        assert aff.choose("m", SequenceFlags("7"), ["t1", "t2", "t3"]) == start
    assert aff.live_on(start, "m") == 1 and aff.live_on(other) == 0
    aff.finished("m", SequenceFlags("7", end=True))
    assert aff.live_on(start) == 0
    # Idle past the timeout: forgotten.
    aff.choose("m", SequenceFlags("8", start=True), ["t1", "t2"])
    clock.advance(61)
    assert aff.live_on(start) + aff.live_on(other) == 0
    assert aff.choose("m", SequenceFlags("9"), []) is None  # no copy, no pin: the caller loads


def test_a_pinned_copy_that_is_gone_is_an_error_never_a_switch() -> None:
    aff = SequenceAffinity(FakeClock())
    start = aff.choose("m", SequenceFlags("s", start=True), ["t1", "t2"])
    left = ["t2"] if start == "t1" else ["t1"]
    with pytest.raises(SequenceLost, match="start the sequence again"):
        aff.choose("m", SequenceFlags("s"), left)
    # A new start is placed afresh on what is ready.
    assert aff.choose("m", SequenceFlags("s", start=True), left) == left[0]
