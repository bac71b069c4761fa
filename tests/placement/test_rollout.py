"""The rollout state machine and its gates (placement.rollout), pure: counts and a clock passed in, no sleeping."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.routing import Router
from placement.clock import FakeClock
from placement.errors import InvalidSpec
from placement.records import RouteSpec
from placement.rollout import RolloutSpec, apply, end, evaluate, routed, start, window_of
from placement.route_stats import RouteCounts, RouteStats, Sketch, bucket_ms, bucket_of

ROUTE = RouteSpec.parse("r", {"splits": [{"model": "a", "weight": 3}, {"model": "c", "weight": 1}]})


class Traffic:
    """Cumulative route counts, as Redis would hold them after the gateways' flushes."""

    def __init__(self) -> None:
        self.counts = RouteCounts()

    def add(self, model: str, n: int, errors: int = 0, seconds: float = 0.01) -> None:
        stats = RouteStats()
        for i in range(n):
            stats.record("r", model, i < errors, seconds)
        batch = stats.drain().routes["r"].models[model]
        self.counts = RouteCounts(
            {**self.counts.models, model: self.counts.model(model).merged(batch)}, self.counts.shadows
        )

    def shadow(self, model: str, agree: int, disagree: int, primary_s: float, shadow_s: float) -> None:
        sc = self.counts.shadows.setdefault(model, RouteCounts().shadow(model))
        for outcome, n in (("sent", agree + disagree), ("agree", agree), ("disagree", disagree)):
            sc.counts[outcome] = sc.n(outcome) + n
        for _ in range(agree + disagree):
            sc.primary.add(primary_s)
            sc.shadow.add(shadow_s)


def spec(**over: Any) -> RolloutSpec:
    body = {"model": "b", "steps": [10, 50, 100], "step_seconds": 60, "min_requests": 20, **over}
    return RolloutSpec.parse(body)


def look(state: dict[str, Any], traffic: Traffic, clock: FakeClock) -> tuple[dict[str, Any], RouteSpec | None]:
    verdict = evaluate(state, window_of(state, traffic.counts), clock.now())
    return apply(state, verdict, clock.now(), traffic.counts)


def weights(route: RouteSpec) -> dict[str, int]:
    return {s.model: s.weight for s in route.splits}


def test_a_good_candidate_walks_every_step_and_ends_alone_on_the_route() -> None:
    clock, traffic = FakeClock(), Traffic()
    traffic.add("a", 500)  # before the rollout: not in its windows
    state, route = start(ROUTE, spec(), clock.now(), traffic.counts)
    assert state["phase"] == "step" and state["weight"] == 10
    assert weights(route) == {"a": 3 * 90, "c": 1 * 90, "b": 10 * 4}  # 10% for b, a:c stays 3:1
    traffic.add("b", 25)
    traffic.add("a", 200)
    state2, changed = look(state, traffic, clock)
    assert changed is None and state2 is state  # enough requests, not enough time: hold
    clock.advance(60)
    state, route2 = look(state, traffic, clock)
    assert state["phase"] == "step" and state["step"] == 1 and route2 is not None and weights(route2)["b"] == 200
    assert state["history"][0]["candidate"]["requests"] == 25 and state["history"][0]["result"] == "passed"
    clock.advance(60)
    state, changed = look(state, traffic, clock)  # the window restarted at the step: no requests yet, hold
    assert changed is None
    for _ in range(2):
        traffic.add("b", 30)
        traffic.add("a", 30)
        clock.advance(60)
        state, route3 = look(state, traffic, clock)
    assert state["phase"] == "promoted" and route3 is not None
    assert weights(route3) == {"b": 100} and state["weight"] == 100


def test_an_erring_candidate_is_rolled_back_at_its_first_step_with_the_figures() -> None:
    clock, traffic = FakeClock(), Traffic()
    state, _ = start(ROUTE, spec(), clock.now(), traffic.counts)
    traffic.add("b", 19, errors=4)
    assert look(state, traffic, clock)[1] is None  # under min_requests: no verdict yet
    traffic.add("b", 1)
    traffic.add("a", 100, errors=1)
    state, route = look(state, traffic, clock)  # at once, before step_seconds
    assert state["phase"] == "rolled_back" and route == ROUTE
    assert state["gate"] == {"gate": "error_rate", "candidate": 0.2, "rest": 0.01, "limit": 0.02}
    assert "error rate 0.2000" in state["reason"]


def test_a_slow_candidate_is_rolled_back_on_p99() -> None:
    clock, traffic = FakeClock(), Traffic()
    state, _ = start(ROUTE, spec(), clock.now(), traffic.counts)
    traffic.add("a", 100, seconds=0.010)
    traffic.add("b", 20, seconds=0.020)
    state, route = look(state, traffic, clock)
    assert state["phase"] == "rolled_back" and route == ROUTE and state["gate"]["gate"] == "p99"
    assert state["gate"]["candidate_ms"] > 1.5 * state["gate"]["rest_ms"]


def test_a_100_percent_step_compares_with_the_rests_last_figures() -> None:
    clock, traffic = FakeClock(), Traffic()
    state, _ = start(ROUTE, spec(steps=[50, 100]), clock.now(), traffic.counts)
    traffic.add("a", 50, seconds=0.010)
    traffic.add("b", 50, seconds=0.010)
    clock.advance(60)
    state, _ = look(state, traffic, clock)
    assert state["weight"] == 100 and state["reference"]["requests"] == 50
    traffic.add("b", 30, errors=3)  # the rest has no requests at 100%: its last window stands in
    state, route = look(state, traffic, clock)
    assert state["phase"] == "rolled_back" and state["gate"]["rest"] == 0.0 and route == ROUTE


def test_the_shadow_phase_gates_on_agreement_then_steps() -> None:
    clock, traffic = FakeClock(), Traffic()
    gates = {"min_shadow_agreement": 0.9}
    state, route = start(ROUTE, spec(shadow_first_seconds=30, gates=gates), clock.now(), traffic.counts)
    assert state["phase"] == "shadow" and weights(route) == weights(ROUTE)
    assert [(s.model, s.percent) for s in route.shadows] == [("b", 100.0)]
    traffic.shadow("b", agree=19, disagree=1, primary_s=0.01, shadow_s=0.01)
    assert look(state, traffic, clock)[1] is None  # agreement 0.95, but 30 s have not passed
    clock.advance(30)
    state2, route2 = look(state, traffic, clock)
    assert state2["phase"] == "step" and route2 is not None and route2.shadows == () and weights(route2)["b"] == 40
    traffic.shadow("b", agree=10, disagree=10, primary_s=0.01, shadow_s=0.01)
    state3, route3 = look(state, traffic, clock)
    assert state3["phase"] == "rolled_back" and state3["gate"]["gate"] == "shadow_agreement" and route3 == ROUTE


def test_promote_and_abort_end_at_once() -> None:
    clock = FakeClock()
    state, _ = start(ROUTE, spec(), clock.now(), RouteCounts())
    promoted, route = end(state, "promoted", "by hand", clock.now())
    assert promoted["phase"] == "promoted" and weights(route) == {"b": 100}
    aborted, route = end(state, "aborted", "by hand", clock.now())
    assert aborted["phase"] == "aborted" and route == ROUTE
    assert promoted["version"] == aborted["version"] == state["version"] + 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "b", "steps": [5, 5]},
        {"model": "b", "steps": [0, 50]},
        {"model": "b", "steps": [50, 101]},
        {"model": "b", "min_requests": 0},
        {"model": "b", "gates": {"max_p99_ratio": -1}},
        {"model": "b", "gates": {"min_shadow_agreement": 2}},
        {"model": "b", "gates": {"oops": 1}},
        {"model": "b", "extra": 1},
        {"model": "bad name"},
    ],
)
def test_bad_bodies_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec):
        RolloutSpec.parse(body)


def test_defaults_follow_the_contract() -> None:
    s = RolloutSpec.parse({"model": "b"})
    assert s.steps == (1, 5, 25, 50, 100) and s.step_seconds == 60 and s.min_requests == 200
    assert s.gates.max_error_rate_increase == 0.01 and s.gates.max_p99_ratio == 1.5
    assert s.gates.min_shadow_agreement is None and s.shadow_first_seconds == 0


def test_sticky_users_move_at_most_once_and_only_to_the_candidate() -> None:
    base = RouteSpec.parse(
        "r",
        {"splits": [{"model": "a", "weight": 2}, {"model": "c", "weight": 1}], "sticky_header": "x-user"},
    )
    steps = [1, 5, 25, 50, 99]
    routes = [base] + [routed(base, "b", "step", pct) for pct in steps] + [routed(base, "b", "promoted", 100)]
    router = Router(random.Random(0))
    users = [f"user-{i}" for i in range(3000)]
    paths = {
        u: [router.choose(r, lambda h, u=u: u if h == "x-user" else None, {"a", "b", "c"}) for r in routes]
        for u in users
    }
    for u, path in paths.items():
        first_b = path.index("b")
        assert all(m == path[0] for m in path[:first_b]), (u, path)  # on its old model until it moves...
        assert all(m == "b" for m in path[first_b:]), (u, path)  # ...then on the candidate for good
    on_b = [sum(p[i] == "b" for p in paths.values()) / len(users) for i in range(1, len(steps) + 1)]
    assert on_b == pytest.approx([p / 100 for p in steps], abs=0.05)  # the shares still follow the steps


def test_sketches_merge_subtract_and_give_quantiles_within_a_bucket() -> None:
    sk = Sketch()
    for ms in range(1, 101):
        sk.add(ms / 1000)
    p50, p99 = sk.quantile_ms(0.5), sk.quantile_ms(0.99)
    assert p50 is not None and 50 <= p50 <= 50 * 1.2
    assert p99 is not None and 99 <= p99 <= 99 * 1.2
    assert sk.minus(sk).total == 0 and Sketch().quantile_ms(0.99) is None
    assert bucket_ms(bucket_of(0.5)) >= 500 > bucket_ms(bucket_of(0.5) - 1)
