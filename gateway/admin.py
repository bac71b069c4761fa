"""The admin REST API and the process endpoints (/healthz, /readyz, /metrics, /ui, /admin/stats).

Handlers read the JSON themselves and hand it to `placement.registry`, which validates it; errors are
mapped once, by the exception handler installed in `build_admin_app`.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.errors import ModelyardError
from gateway.dataplane import DataPlane
from gateway.error_shape import install_error_shape
from gateway.errors import BadRequest, Unauthorized, to_http
from gateway.metrics import Metrics
from gateway.readiness import readiness
from gateway.rollout_api import rollout_router
from gateway.stats import BackendStats
from gateway.ui import UI_HTML
from placement.errors import StoreUnavailable
from placement.records import check_name
from placement.registry import Registry
from placement.rollouts import Rollouts
from placement.routes import RouteRegistry
from placement.view_answers import ViewAnswers


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise BadRequest("a JSON body is required")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def build_admin_app(
    registry: Registry,
    routes: RouteRegistry,
    dataplane: DataPlane,
    metrics: Metrics,
    admin_token: str,
    stats: BackendStats | None = None,
    rollouts: Rollouts | None = None,
) -> FastAPI:
    stats = stats or BackendStats()
    app = FastAPI(title="modelyard admin", docs_url="/admin/docs", openapi_url="/admin/openapi.json")

    @app.exception_handler(ModelyardError)
    async def _modelyard_error(_request: Request, exc: ModelyardError) -> Response:
        err = to_http(exc)
        return Response(err.body(), status_code=err.status, headers=dict(err.headers()))

    @app.exception_handler(ValueError)
    async def _value_error(_request: Request, exc: ValueError) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    health = registry.placer.health
    answers = ViewAnswers(registry.view)
    install_error_shape(app, health)

    async def _read(live: Callable[[], Awaitable[Any]], from_view: Callable[[], Any]) -> Any:
        """A read from Redis; while Redis is unreachable, the same answer from this gateway's view, marked
        `"source": "view"` and `x-modelyard-source: view`."""
        try:
            with health.guard():
                return await live()
        except StoreUnavailable:
            answer = {**from_view(), "source": "view", "stale_since": health.since}
            return JSONResponse(answer, headers={"x-modelyard-source": "view"})

    def writable(request: Request) -> None:
        if request.method not in ("GET", "HEAD"):
            health.check()  # a write needs Redis: refused at once while it is known to be down

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
            raise Unauthorized(
                "missing or wrong admin token: send 'Authorization: Bearer <token>' (the token printed at start "
                "or set with --admin-token / MODELYARD_ADMIN_TOKEN)"
            )

    admin = APIRouter(prefix="/admin", dependencies=[Depends(require_token), Depends(writable)])

    @admin.put("/backends/{backend_id}")
    async def put_backend(backend_id: str, request: Request) -> Any:
        return await registry.put_backend(backend_id, await _body(request))

    @admin.get("/backends")
    async def list_backends() -> Any:
        async def live() -> Any:
            return {"backends": await registry.list_backends()}

        return await _read(live, lambda: {"backends": answers.backends()})

    @admin.get("/backends/{backend_id}")
    async def get_backend(backend_id: str) -> Any:
        return await _read(lambda: registry.backend_json(backend_id), lambda: answers.backend(backend_id))

    @admin.delete("/backends/{backend_id}")
    async def delete_backend(backend_id: str) -> Any:
        return await registry.delete_backend(backend_id)

    @admin.put("/models/{name}")
    async def put_model(name: str, request: Request) -> Any:
        return await registry.put_model(name, await _body(request))

    @admin.put("/models")
    async def put_models(request: Request) -> Any:
        return await registry.put_models(await _body(request))

    @admin.get("/models")
    async def list_models(limit: int = 100, cursor: str | None = None) -> Any:
        if cursor is not None:
            check_name("model", cursor)

        async def live() -> JSONResponse:
            # Already plain JSON: skipping FastAPI's jsonable_encoder saves about a third of a 1,000-model page.
            return JSONResponse(await registry.list_models(limit, cursor))

        return await _read(live, lambda: answers.models(limit, cursor))

    @admin.get("/models/{name}")
    async def get_model(name: str) -> Any:
        return await _read(lambda: registry.model_json(name), lambda: answers.model(name))

    @admin.delete("/models/{name}")
    async def delete_model(name: str) -> Any:
        return await registry.delete_model(name)

    @admin.post("/models/{name}/load")
    async def load_model(name: str) -> Any:
        return await registry.load_model(name)

    @admin.post("/models/{name}/unload")
    async def unload_model(name: str) -> Any:
        await registry.status(name)
        unloaded = await registry.unload_model(name)
        return {**await registry.model_json(name), "unloaded_from": unloaded}

    @admin.post("/models/{name}/refresh")
    async def refresh_model(name: str) -> Any:
        return await registry.refresh_model(name)

    @admin.put("/routes/{name}")
    async def put_route(name: str, request: Request) -> Any:
        return await routes.put_route(name, await _body(request))

    @admin.get("/routes")
    async def list_routes() -> Any:
        async def live() -> Any:
            return {"routes": await routes.list_routes()}

        return await _read(live, lambda: {"routes": answers.routes()})

    @admin.get("/routes/{name}")
    async def get_route(name: str) -> Any:
        return await _read(lambda: routes.get_route(name), lambda: answers.route(name))

    @admin.delete("/routes/{name}")
    async def delete_route(name: str) -> Any:
        return await routes.delete_route(name)

    @admin.get("/placement")
    async def placement() -> Any:
        return await _read(registry.placement, answers.placement)

    @admin.get("/stats")
    async def placement_stats() -> Any:
        """This gateway's placement activity for the live page: per backend, hits, misses, loads, failed loads
        and evictions per minute over the last minute, the hit ratio, and the latest loads and evictions."""
        return {
            "now": time.time(),
            "models_registered": len(registry.view.models),
            "metrics_model_labels": metrics.policy.describe(),
            **stats.rates(),
        }

    if rollouts is not None:  # rollouts and shadow reports: gateway.rollout_api
        admin.include_router(rollout_router(rollouts, _body))
    app.include_router(admin)

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready = can serve: 200 once the view was synced from Redis, also while Redis is unreachable (the
        body says degraded and since when); 503 before the first sync and while draining. No Redis call."""
        return readiness(dataplane, health)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ui")
    async def ui(request: Request, token: str | None = None) -> Response:
        # A browser can't send a bearer header on navigation: the page also accepts ?token=.
        if token is not None:
            if not hmac.compare_digest(token.encode(), admin_token.encode()):
                raise Unauthorized("wrong admin token in ?token=")
        else:
            require_token(request)
        return HTMLResponse(UI_HTML)

    return app
