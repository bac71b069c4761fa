"""Every answer of the admin app that is not a success is the contract's `{"error": "..."}`: unknown paths and
methods (Starlette's 404 and 405), malformed parameters (FastAPI's validation errors, as 400), Redis being
unreachable (503 with Retry-After), and a bug (500). FastAPI's own `{"detail": ...}` never reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from gateway.errors import to_http
from placement.redis_health import REDIS_DOWN, RedisHealth

log = logging.getLogger("modelyard.admin")


def _path(request: Request) -> str:
    return request.scope.get("raw_path", b"").decode("latin-1") or request.url.path


def install_error_shape(app: FastAPI, health: RedisHealth) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            msg = (
                f"no such path {_path(request)}; the admin API is under /admin (see /admin/docs), the data plane "
                "under /v2/models/{name} and /v1/models/{name}"
            )
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {_path(request)}"
            if exc.headers and "Allow" in exc.headers:
                msg += f"; use {exc.headers['Allow']}"
        else:
            msg = str(exc.detail)
        return JSONResponse({"error": msg}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return JSONResponse({"error": "malformed request: " + "; ".join(parts)}, status_code=400)

    async def _redis(_request: Request, exc: Exception) -> Response:
        err = to_http(health.translate(exc))
        return Response(err.body(), status_code=err.status, headers=dict(err.headers()))

    for kind in REDIS_DOWN:
        app.add_exception_handler(kind, _redis)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback too; the client gets the contract's shape.
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
