"""The hedge race and the budgets of `gateway.hedging`, with gates instead of slow calls and a fake clock for
the windows: tests say who answered, what was cancelled and how many hedges were allowed, never how long."""

from __future__ import annotations

import asyncio

import pytest

from gateway.hedging import HedgeBudget, LatencyWindow, RetryBudget, race
from placement.clock import FakeClock


class Call:
    """One side of a race: answers `value` when its gate opens (or at once without a gate); notes a cancel."""

    def __init__(self, value: str, gate: asyncio.Event | None = None, error: Exception | None = None) -> None:
        self.value = value
        self.gate = gate
        self.error = error
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> str:
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


def good(answer: str) -> bool:
    return not answer.startswith("503")


async def test_an_answer_before_the_delay_sends_no_hedge() -> None:
    first, second = Call("a"), Call("b")
    assert await race(first, second, 5.0, good) == ("a", 0)
    assert not second.started.is_set()


async def test_a_stalled_first_call_is_answered_by_the_hedge_and_cancelled() -> None:
    first, second = Call("a", asyncio.Event()), Call("b")
    assert await race(first, second, 0.01, good) == ("b", 1)
    await asyncio.sleep(0)  # the cancellation reaches the loser on the next turn of the loop
    assert first.cancelled


async def test_the_first_call_still_wins_when_it_answers_before_the_hedge() -> None:
    gate_a, gate_b = asyncio.Event(), asyncio.Event()
    first, second = Call("a", gate_a), Call("b", gate_b)

    def hedge() -> Call:
        gate_a.set()  # the first answers as soon as the hedge has been sent
        return second

    assert await race(first, lambda: hedge()(), 0.01, good) == ("a", 0)
    await asyncio.sleep(0)
    assert second.cancelled


async def test_a_declined_hedge_leaves_the_first_call_to_answer() -> None:
    gate = asyncio.Event()
    first = Call("a", gate)

    def declined() -> None:
        gate.set()
        return None

    assert await race(first, declined, 0.01, good) == ("a", 0)


async def test_a_failed_side_loses_and_when_both_fail_the_first_ones_outcome_stands() -> None:
    gate = asyncio.Event()
    first, second = Call("503 busy", gate), Call("b")
    assert await race(first, second, 0.01, good) == ("b", 1)

    gate_a, gate_b = asyncio.Event(), asyncio.Event()
    first = Call("a", gate_a, error=ConnectionError("first failed"))
    second = Call("503 also", gate_b)

    def hedge() -> object:
        gate_a.set()
        gate_b.set()
        return second()

    with pytest.raises(ConnectionError, match="first failed"):
        await race(first, hedge, 0.01, good)  # type: ignore[arg-type]


async def test_cancelling_the_caller_cancels_both_sides() -> None:
    first, second = Call("a", asyncio.Event()), Call("b", asyncio.Event())
    task = asyncio.create_task(race(first, second, 0.01, good))
    await second.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert first.cancelled and second.cancelled


def test_the_hedge_budget_allows_its_share_of_the_window_and_no_more() -> None:
    clock = FakeClock()
    budget = HedgeBudget(clock, window=10.0)
    for _ in range(100):
        budget.request()
    assert [budget.try_hedge(5.0) for _ in range(7)] == [True] * 5 + [False] * 2
    # Half a window later, 100 more requests: 5 more hedges.
    clock.advance(5.0)
    for _ in range(100):
        budget.request()
    assert sum(budget.try_hedge(5.0) for _ in range(10)) == 5
    # The first 100 requests and their 5 hedges leave the window; the rest stay.
    clock.advance(5.5)
    assert not budget.try_hedge(5.0)
    assert (budget.requests, budget.hedges) == (100, 5)
    clock.advance(20.0)
    # An empty window allows its floor of one hedge (the first stall after a quiet spell), and no more.
    assert [budget.try_hedge(5.0) for _ in range(3)] == [True, False, False]
    assert (budget.requests, budget.hedges) == (0, 1)


def test_a_model_with_little_traffic_gets_one_hedge_per_window() -> None:
    clock = FakeClock()
    budget = HedgeBudget(clock, window=10.0)
    hedges = 0
    for _ in range(60):  # one request every 2 s for 2 minutes, every one slow
        budget.request()
        hedges += budget.try_hedge(5.0)
        clock.advance(2.0)
    assert hedges == 12  # one per 10 s window: 5% of 60 requests would have allowed none


def test_with_every_request_slow_hedges_stay_within_the_budget() -> None:
    clock = FakeClock()
    budget = HedgeBudget(clock, window=10.0)
    hedges = 0
    for i in range(10_000):  # 100 requests a second for 100 s, each one asking for a hedge
        budget.request()
        hedges += budget.try_hedge(2.0)
        if i % 100 == 99:
            clock.advance(1.0)
    assert 0.018 * 10_000 <= hedges <= 0.02 * 10_000


def test_the_latency_window_gives_a_p95_once_it_has_enough_samples() -> None:
    window = LatencyWindow(size=100, min_samples=20)
    for i in range(19):
        window.add(i / 1000)
    assert window.p95() is None
    for i in range(19, 100):
        window.add(i / 1000)
    assert window.p95() == pytest.approx(0.094)
    for _ in range(100):  # the window slides: only recent latencies count
        window.add(0.5)
    assert window.p95() == 0.5


def test_the_retry_budget_is_a_share_of_requests_in_flight_with_a_floor() -> None:
    budget = RetryBudget(percent=20.0, minimum=2)
    budget.active = 5
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]  # max(2, 1) retries in flight
    budget.release()
    assert budget.try_acquire()
    budget.active = 50
    assert sum(budget.try_acquire() for _ in range(20)) == 8  # 10 in flight now
