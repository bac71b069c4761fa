"""Routes in the registry: validation, the name rules (a route is no model and vice versa), and every
gateway's view following a change through pub/sub. Real Redis, fake backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from placement.errors import BadReference, Conflict, InvalidSpec, NotFound
from placement.placer import Placer
from placement.records import HedgePolicy, ModelSpec, RouteSpec
from placement.registry import Registry
from placement.routes import RouteRegistry
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "splits is required"),
        ({"splits": []}, "splits is required"),
        ({"splits": [{"model": "a"}]}, r"splits\[0\].weight must be a non-negative integer, got None"),
        ({"splits": [{"model": "a", "weight": -1}]}, "non-negative integer, got -1"),
        ({"splits": [{"model": "a", "weight": 1.5}]}, "non-negative integer, got 1.5"),
        ({"splits": [{"model": "a", "weight": True}]}, "non-negative integer, got True"),
        ({"splits": [{"model": "a", "weight": 0}]}, "must add up to more than 0"),
        ({"splits": [{"model": "a", "weight": 1}, {"model": "a", "weight": 2}]}, r"splits name\(s\) \['a'\] more"),
        ({"splits": [{"model": "bad name", "weight": 1}]}, "invalid model name 'bad name'"),
        ({"splits": [{"model": "a", "weight": 1}], "shadows": [{"model": "c", "percent": 101}]}, "0 to 100"),
        ({"splits": [{"model": "a", "weight": 1}], "sticky_header": "x user"}, "sticky_header must be a header"),
        ({"splits": [{"model": "a", "weight": 1}], "hedge": {"after_ms": 0}}, "after_ms must be a positive"),
        ({"splits": [{"model": "a", "weight": 1}], "hedge": {"max_extra_percent": 200}}, "from 0 to 100"),
        ({"splits": [{"model": "a", "weight": 1}], "mirror": []}, r"unknown field\(s\) \['mirror'\]"),
    ],
)
def test_malformed_routes_are_refused_with_what_is_wrong(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        RouteSpec.parse("r", body)


def test_a_route_round_trips_with_its_defaults() -> None:
    spec = RouteSpec.parse(
        "r",
        {
            "splits": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}],
            "shadows": [{"model": "c"}],
            "sticky_header": "X-User-Id",
            "hedge": {"after_ms": None},
        },
    )
    assert spec.sticky_header == "x-user-id"
    assert spec.shadows[0].percent == 100.0
    assert spec.hedge == HedgePolicy(None, 5.0)
    assert RouteSpec.from_json(spec.to_json()) == spec


async def setup(make_placer: MakePlacer, backends: dict[str, FakeBackend]) -> tuple[Placer, Registry, RouteRegistry]:
    placer = await make_placer()
    models = [ModelSpec.parse(n, {"runtime": "triton"}) for n in ("a", "b", "c")]
    await register(placer, backends, {"b1": 4}, [*models, ModelSpec.parse("tf", {"runtime": "tfserving"})])
    registry = Registry(placer)
    return placer, registry, RouteRegistry(registry)


SPLIT = {"splits": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}]}


async def test_routes_name_registered_models_of_one_runtime_and_never_a_models_name(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    _, registry, routes = await setup(make_placer, backends)
    with pytest.raises(BadReference, match=r"not registered: \['nope'\]"):
        await routes.put_route("r", {"splits": [{"model": "a", "weight": 1}], "shadows": [{"model": "nope"}]})
    with pytest.raises(BadReference, match="mixes runtimes"):
        await routes.put_route("r", {"splits": [{"model": "a", "weight": 1}, {"model": "tf", "weight": 1}]})
    with pytest.raises(Conflict, match="already the name of a model"):
        await routes.put_route("a", SPLIT)
    assert await routes.put_route("r", SPLIT) == RouteSpec.parse("r", SPLIT).to_json()
    with pytest.raises(Conflict, match="already the name of a route"):
        await registry.put_model("r", {"runtime": "triton"})
    with pytest.raises(Conflict, match=r"named by route\(s\) \['r'\]"):
        await registry.delete_model("b")
    assert [r["name"] for r in await routes.list_routes()] == ["r"]
    assert (await routes.delete_route("r"))["deleted"] is True
    with pytest.raises(NotFound):
        await routes.get_route("r")
    await registry.delete_model("b")  # no route names it now


async def test_a_route_change_on_one_gateway_reaches_the_others_view(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    writer, _, routes = await setup(make_placer, backends)
    reader = await make_placer()  # another gateway on the same Redis
    assert reader.view.routes == {}

    changed = asyncio.Event()
    reader.view.on_route_event = lambda name: changed.set()

    async def seen(want: RouteSpec | None) -> None:
        async with asyncio.timeout(5):
            while reader.view.routes.get("r") != want:
                await changed.wait()
                changed.clear()

    await routes.put_route("r", SPLIT)
    assert writer.view.routes["r"] == RouteSpec.parse("r", SPLIT)  # read-your-writes on the writer
    await seen(RouteSpec.parse("r", SPLIT))
    update = {"splits": [{"model": "a", "weight": 1}], "shadows": [{"model": "c", "percent": 5}]}
    await routes.put_route("r", update)
    await seen(RouteSpec.parse("r", update))
    await routes.delete_route("r")
    await seen(None)
    # A gateway that starts later reads routes from the snapshot.
    await routes.put_route("r", SPLIT)
    assert (await make_placer()).view.routes["r"] == RouteSpec.parse("r", SPLIT)
