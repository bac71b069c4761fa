"""Route resolution (`gateway.routing.Router`) in process, with a seeded Random: shares, stickiness, targets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.errors import BadRequest
from gateway.routing import TARGET_HEADER, Router
from placement.errors import UnknownModel
from placement.records import RouteSpec


def route(weights: dict[str, int], sticky: str | None = None) -> RouteSpec:
    body: dict[str, object] = {"splits": [{"model": m, "weight": w} for m, w in weights.items()]}
    if sticky:
        body["sticky_header"] = sticky
    return RouteSpec.parse("r", body)


def headers(**values: str) -> object:
    lowered = {k.replace("_", "-"): v for k, v in values.items()}
    return lowered.get


def shares(picks: list[str]) -> dict[str, float]:
    return {m: n / len(picks) for m, n in Counter(picks).items()}


def test_a_90_10_split_over_5000_requests_is_within_2_points() -> None:
    router = Router(random.Random(20261122))
    r = route({"a": 90, "b": 10})
    got = shares([router.choose(r, headers(), {"a", "b"}) for _ in range(5000)])
    assert abs(got["a"] - 0.90) < 0.02 and abs(got["b"] - 0.10) < 0.02, got


def test_sticky_users_stay_put_and_their_shares_follow_the_weights() -> None:
    router = Router(random.Random(1))
    r = route({"a": 90, "b": 10}, sticky="x-user-id")
    users = [f"user-{i}" for i in range(5000)]
    first = {u: router.choose(r, headers(x_user_id=u), {"a", "b"}) for u in users}
    again = {u: router.choose(r, headers(x_user_id=u), {"a", "b"}) for u in reversed(users)}
    assert first == again
    got = shares(list(first.values()))
    assert abs(got["a"] - 0.90) < 0.02, got
    # Another process (another Random) places every user the same way: the hash, not the draw, decides.
    assert {u: Router(random.Random(2)).choose(r, headers(x_user_id=u), {"a", "b"}) for u in users[:200]} == {
        u: first[u] for u in users[:200]
    }


def test_a_weight_change_moves_only_the_users_it_must() -> None:
    router = Router(random.Random(1))
    users = [f"user-{i}" for i in range(5000)]
    before = route({"a": 50, "b": 30, "c": 20}, sticky="x-user-id")
    after = route({"a": 50, "b": 30, "c": 40}, sticky="x-user-id")  # only c's weight changes
    old = {u: router.choose(before, headers(x_user_id=u), {"a", "b", "c"}) for u in users}
    new = {u: router.choose(after, headers(x_user_id=u), {"a", "b", "c"}) for u in users}
    moved = Counter((old[u], new[u]) for u in users if old[u] != new[u])
    # Users only move to c, the model that gained weight: none between a and b.
    assert set(moved) <= {("a", "c"), ("b", "c")}, moved
    # c's share goes from 20% to 40/120 = 33.3%: about 13.3% of users must move, and no more than that do.
    assert abs(sum(moved.values()) / len(users) - (40 / 120 - 20 / 100)) < 0.02, moved


def test_users_without_the_sticky_header_are_spread_by_weight() -> None:
    router = Router(random.Random(7))
    r = route({"a": 90, "b": 10}, sticky="x-user-id")
    got = shares([router.choose(r, headers(), {"a", "b"}) for _ in range(5000)])
    assert abs(got["b"] - 0.10) < 0.02


def test_the_target_header_picks_a_model_of_the_route_and_only_those() -> None:
    router = Router(random.Random(1))
    r = route({"a": 100, "b": 0})
    assert router.choose(r, {TARGET_HEADER: "b"}.get, {"a", "b"}) == "b"  # weight 0 can still be targeted
    with pytest.raises(BadRequest, match=r"'c' is not one of route 'r'.s models; it can target \['a', 'b'\]"):
        router.choose(r, {TARGET_HEADER: "c"}.get, {"a", "b", "c"})


def test_a_split_whose_model_is_gone_is_skipped() -> None:
    router = Router(random.Random(1))
    r = route({"a": 50, "b": 50})
    assert {router.choose(r, headers(), {"b"}) for _ in range(50)} == {"b"}
    with pytest.raises(UnknownModel, match="no registered model"):
        router.choose(r, headers(), set())
