"""Routes: names that clients call and the gateway resolves to models. What the admin API does, without HTTP.

A route is stored in Redis (`placement.store.put_route`, whose script checks that its name is no model's and
that every model it names is registered, in one step) and mirrored in every gateway's view through the
`route` event, so a change reaches every gateway within the time pub/sub takes; the gateway that wrote it sees
it at once. Which model a request to a route goes to is the data plane's business (`gateway.routing`).
"""

from __future__ import annotations

import logging
from typing import Any

from placement.errors import BadReference, Conflict, NotFound
from placement.records import RouteSpec, check_name
from placement.registry import Registry
from placement.store import version

log = logging.getLogger("modelyard.admin")


class RouteRegistry:
    def __init__(self, registry: Registry) -> None:
        self.store = registry.store
        self.view = registry.view
        # A model can't take a route's name, and a model a route names can't be deleted from under it.
        registry.name_taken.append(self.store.route_exists)
        registry.model_used.append(self.routes_using)

    async def put_route(self, name: str, body: Any) -> dict[str, Any]:
        spec = RouteSpec.parse(name, body)
        result = await self.store.put_route(spec)
        if result == "model":
            raise Conflict(f"{name!r} is already the name of a model; a route can't have the same name")
        if result.startswith("missing:"):
            missing = result.split(":", 1)[1].split(",")
            raise BadReference(
                f"route {name!r} names model(s) that are not registered: {missing}; register them with "
                "PUT /admin/models/{name} first"
            )
        if result.startswith("runtimes:"):
            raise BadReference(
                f"route {name!r} mixes runtimes ({result.split(':', 1)[1]}): one client protocol can't call them "
                "all; make a route per runtime"
            )
        self.view.set_route(name, spec)
        self.view.versions[f"route:{name}"] = version()
        log.info("route %s set: %s", name, spec.to_json())
        return spec.to_json()

    async def get_route(self, name: str) -> dict[str, Any]:
        spec = await self.store.get_route(check_name("route", name))
        if spec is None:
            raise NotFound(f"route {name!r} is not registered")
        return spec.to_json()

    async def list_routes(self) -> list[dict[str, Any]]:
        routes = await self.store.routes()
        return [routes[n].to_json() for n in sorted(routes)]

    async def delete_route(self, name: str) -> dict[str, Any]:
        if not await self.store.delete_route(check_name("route", name)):
            raise NotFound(f"route {name!r} is not registered")
        self.view.set_route(name, None)
        self.view.tombstones[f"route:{name}"] = version()  # re-seeded if Redis loses data (rebuild)
        log.info("route %s deleted", name)
        return {"name": name, "deleted": True}

    async def routes_using(self, model: str) -> list[str]:
        return sorted(n for n, r in (await self.store.routes()).items() if model in r.models)
