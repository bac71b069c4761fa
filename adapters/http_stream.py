"""A backend's HTTP answer relayed as it comes (server-sent events of Triton's `generate_stream`).

The status and headers are read first; the body then comes chunk by chunk, as the backend writes it, never
gathered. Transport failures before the headers become adapter errors, as in `adapters.http_forward`; after
them, the stream just ends (the client sees the events it got).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from adapters.base import ForwardRequest
from adapters.errors import BackendRefused, BackendTimeout, BackendUnavailable
from adapters.http_forward import HOP_BY_HOP


@dataclass(slots=True)
class StreamedResponse:
    """`status` and `headers` of the backend's answer (hop-by-hop ones left out); `chunks` its body, as sent."""

    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]


@asynccontextmanager
async def stream_http(
    client: httpx.AsyncClient, backend_id: str, url: str, request: ForwardRequest
) -> AsyncIterator[StreamedResponse]:
    """POST `request` to `url` and yield the answer as a `StreamedResponse`; `request.timeout` bounds the wait
    for the headers and for each chunk (a stream may last longer as a whole)."""
    built = client.build_request(
        request.method,
        url,
        headers=request.headers,
        content=request.body or None,
        timeout=httpx.Timeout(request.timeout, connect=min(request.timeout, 5.0)),
    )
    try:
        response = await client.send(built, stream=True)
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"backend {backend_id} did not answer within {request.timeout:g} s", backend_id) from exc
    except httpx.ConnectError as exc:
        raise BackendRefused(f"backend {backend_id} could not be reached: {exc}", backend_id) from exc
    except httpx.TransportError as exc:
        raise BackendUnavailable(f"backend {backend_id}: {type(exc).__name__}: {exc}", backend_id) from exc
    try:
        headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1"))
            for k, v in response.headers.raw
            if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        yield StreamedResponse(response.status_code, headers, _chunks(response))
    finally:
        await response.aclose()


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        return  # the backend went away mid-stream: the client's stream ends here
