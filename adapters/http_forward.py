"""Forwarding of one HTTP request to a backend, byte for byte, shared by the HTTP-speaking adapters.

Bodies go out and come back as raw bytes: a response's content-encoding is passed on, not decoded.
Transport failures become adapter errors here, once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

from adapters.base import ForwardRequest, ForwardResponse
from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable

if TYPE_CHECKING:  # upstream.py imports HOP_BY_HOP from here
    from adapters.upstream import UpstreamPool

# Headers that describe one hop of the connection, not the message; never passed on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "date",
        "server",
    }
)


def make_client(max_connections: int = 512) -> httpx.AsyncClient:
    """One client per backend: pooled keep-alive connections, no global timeout (each call sets one)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    client = httpx.AsyncClient(limits=limits, timeout=None, follow_redirects=False, trust_env=False)
    # httpx would add its own Accept-Encoding; the backend must see only what the client asked for, or a
    # client that never asked for gzip gets a compressed body passed through to it.
    del client.headers["accept-encoding"]
    return client


async def send_raw(
    client: httpx.AsyncClient,
    backend_id: str,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout: float,
) -> ForwardResponse:
    request = client.build_request(
        method,
        url,
        headers=headers,
        content=body if body else None,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
    )
    try:
        response = await client.send(request, stream=True)
        try:
            chunks = [chunk async for chunk in response.aiter_raw()]
        finally:
            await response.aclose()
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"backend {backend_id} did not answer within {timeout:g} s", backend_id) from exc
    except httpx.ConnectError as exc:
        raise BackendRefused(f"backend {backend_id} could not be reached: {exc}", backend_id) from exc
    except httpx.TransportError as exc:
        raise BackendUnavailable(
            f"backend {backend_id} could not be reached: {type(exc).__name__}: {exc}", backend_id
        ) from exc
    out_headers = [
        (k.decode("latin-1").lower(), v.decode("latin-1"))
        for k, v in response.headers.raw
        if k.decode("latin-1").lower() not in HOP_BY_HOP
    ]
    return ForwardResponse(response.status_code, out_headers, b"".join(chunks))


async def forward_http(
    pool: UpstreamPool | None,
    client: httpx.AsyncClient,
    backend_id: str,
    base_url: str,
    path: str,
    request: ForwardRequest,
) -> ForwardResponse:
    """Send a data-plane request to `base_url + path`: through the lean pool for plain-HTTP backends, else httpx."""
    if pool is not None:
        return await pool.request(request.method, path, request.headers, request.body, request.timeout)
    return await send_raw(
        client, backend_id, request.method, base_url + path, request.headers, request.body, request.timeout
    )


def error_text(body: bytes) -> str:
    """The `error` of a JSON error body (Triton's and TF Serving's form), or "" when there is none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    return str(data.get("error", "")) if isinstance(data, dict) else ""
