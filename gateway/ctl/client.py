"""The admin API over HTTP, for the command line. Every failure becomes one CtlError line a person can act on."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.ctl.errors import CtlError
from gateway.ctl.fleet import Fleet, from_record

PAGE = 1000  # models per GET /admin/models page (the API's maximum)


class AdminClient:
    def __init__(self, url: str, token: str | None, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=300, transport=transport)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=body, params=params)
        except httpx.TimeoutException:
            raise CtlError(f"{method} {self.url}{path}: the gateway did not answer in time") from None
        except httpx.TransportError as exc:
            raise CtlError(
                f"cannot reach the gateway at {self.url} ({type(exc).__name__}: {exc}); is it running? "
                "Set --url or MODELYARD_URL"
            ) from None
        if r.status_code == 401:
            raise CtlError(
                f"the gateway at {self.url} refused the admin token (401): pass the token it printed at start "
                "or was started with, with --token or MODELYARD_ADMIN_TOKEN"
            )
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text.strip() or r.reason_phrase
            raise CtlError(f"{method} {path}: {r.status_code}: {message}")
        return r.json() if r.content else None

    def models(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            page = self.call("GET", "/admin/models", params=params)
            out += page["models"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def backends(self) -> list[dict[str, Any]]:
        backends: list[dict[str, Any]] = self.call("GET", "/admin/backends")["backends"]
        return backends

    def routes(self) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = self.call("GET", "/admin/routes")["routes"]
        return routes

    def fleet(self) -> Fleet:
        """The registry as a fleet: every backend, model and route with its settings, in canonical form."""
        fleet = Fleet()
        for b in self.backends():
            fleet.backends[b["id"]] = from_record("backends", b)
        for m in self.models():
            fleet.models[m["name"]] = from_record("models", m)
        for r in self.routes():
            fleet.routes[r["name"]] = from_record("routes", r)
        return fleet
