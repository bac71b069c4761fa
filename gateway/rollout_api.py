"""Admin endpoints of rollouts and of the shadow comparison report, included under /admin by `gateway.admin`.

The decisions and their state are `placement.rollouts`; these handlers only parse and call it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from redis.exceptions import RedisError

from placement.errors import StoreUnavailable
from placement.rollouts import Rollouts


def rollout_router(rollouts: Rollouts, read_body: Callable[[Request], Awaitable[Any]]) -> APIRouter:
    """`read_body` is the admin API's JSON body reader (gateway.admin)."""
    router = APIRouter()

    @router.put("/routes/{name}/rollout")
    async def start_rollout(name: str, request: Request) -> Any:
        return await rollouts.start_rollout(name, await read_body(request))

    @router.get("/routes/{name}/rollout")
    async def get_rollout(name: str) -> Any:
        return await rollouts.status(name)

    @router.post("/routes/{name}/rollout/promote")
    async def promote_rollout(name: str) -> Any:
        return await rollouts.finish(name, "promoted")

    @router.delete("/routes/{name}/rollout")
    async def abort_rollout(name: str) -> Any:
        return await rollouts.finish(name, "aborted")

    @router.get("/routes/{name}/shadows")
    async def shadow_report(name: str) -> Any:
        return await rollouts.shadow_report(name)

    @router.get("/rollouts")
    async def list_rollouts() -> Any:
        """Every rollout as Redis has it (for the live page); while Redis is unreachable, as last read."""
        fresh = True
        try:
            await rollouts.refresh()
        except (StoreUnavailable, RedisError):
            fresh = False
        return {"rollouts": [rollouts.summary(r) for r in sorted(rollouts.states)], "fresh": fresh}

    return router
