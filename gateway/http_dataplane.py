"""The HTTP data plane as a plain ASGI app: KServe v2 (Open Inference Protocol) and TF Serving REST paths.

Thin on purpose: it parses the path, buffers the body up to the limit, calls `DataPlane.call`, and writes
the backend's answer back byte for byte with modelyard's headers. It runs below FastAPI's routing so the
warm path pays for nothing it does not use.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from adapters.errors import ModelyardError
from gateway import repository
from gateway.dataplane import Answer, Call, DataPlane
from gateway.errors import BadRequest, BodyTooLarge, HttpError, MethodNotAllowed, NotReady, NotSupported, to_http
from gateway.forward_headers import HeaderForwarding
from gateway.http_stream import relay_stream
from gateway.metrics import Metrics
from gateway.refusals import http_refusal
from gateway.routing import HeaderLookup
from placement.errors import UnknownModel

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Request headers passed on to the backend; the rest (auth, cookies, hop-by-hop) stay at the gateway.
FORWARD_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "accept",
        "accept-encoding",
        "inference-header-content-length",
        "traceparent",
        "tracestate",
        "x-request-id",
        "triton-grpc-protocol-infer-header",
    }
)
_FORWARD_RAW = frozenset(h.encode("latin-1") for h in FORWARD_HEADERS)
KSERVE_OPS = {
    "infer": "POST",
    "ready": "GET",
    "": "GET",
    "config": "GET",
    "stats": "GET",
    "generate": "POST",  # Triton's generate extension
    "generate_stream": "POST",  # its server-sent events, relayed as they come (gateway.http_stream)
}
TFSERVING_OPS = {"predict": "POST", "classify": "POST", "regress": "POST", "": "GET", "metadata": "GET"}
FIXED_PATHS = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})
# Triton's extensions that work through the gateway, and only those (not: model_repository, whose load and
# unload are the admin API's; system/cuda shared memory; logging; trace).
EXTENSIONS = [
    "classification",
    "sequence",
    "model_configuration",
    "schedule_policy",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "generate",
]
SERVER_METADATA = {"name": "modelyard", "version": "0.1.0", "extensions": EXTENSIONS}


class HttpDataPlane:
    def __init__(self, dataplane: DataPlane, metrics: Metrics, max_body_bytes: int) -> None:
        self.dp = dataplane
        self.metrics = metrics
        self.obs = dataplane.obs  # counts, times, traces and logs each request (gateway.observe)
        self.max_body = max_body_bytes
        self.forwarding = HeaderForwarding(dataplane.settings.forward_headers)

    @staticmethod
    def handles(path: str) -> bool:
        return path == "/v2" or path.startswith(("/v2/", "/v1/models/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        op = "other"
        status = 500
        error = None
        req = self.obs.begin("http", scope["headers"])
        if req.span is not None:
            req.span.set_attributes({"http.request.method": scope["method"], "url.path": scope["path"]})
        try:
            method = scope["method"]
            path = scope["path"]
            if path in FIXED_PATHS and method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
            if path in ("/v2", "/v2/"):
                op, status = "server_metadata", 200
                await _json(send, 200, SERVER_METADATA)
                return
            if path == "/v2/health/live":
                op, status = "live", 200
                await _empty(send, 200)
                return
            if path == "/v2/health/ready":
                op, status = "server_ready", 200 if self.dp.ready else 503
                await _empty(send, status)
                return
            served = await self._gateway_wide(method, path, scope, receive, send)
            if served is not None:
                op, status = served
                return
            if path.startswith("/v1/"):
                protocol = "tfserving"
                name, version, op = parse_tfserving_path(path)
                expected = TFSERVING_OPS[op]
            else:
                protocol = "kserve"
                name, version, op = parse_kserve_path(path)
                expected = KSERVE_OPS[op]
            if method != expected:
                raise BadRequest(f"{method} is not allowed on {path}; use {expected}")
            if not self.dp.ready:
                raise NotReady("the gateway has not reached Redis yet; try again in a moment")
            if op == "ready":
                status = await self._ready(send, name, version, header_lookup(scope))
                return
            body = await read_body(scope, receive, self.max_body) if method == "POST" else b""
            headers = forward_headers(scope, self.forwarding)
            call = Call(protocol, method, name, version, op, body, headers, header=header_lookup(scope))
            if op == "generate_stream":
                status, req.backend = await relay_stream(self.dp, call, receive, send)
                return
            answer = await self.dp.call(call)
            status = answer.response.status
            req.backend = answer.backend  # the copy that answered (a hedge's, when it won)
            await send_answer(send, answer)
        except ModelyardError as exc:
            err = to_http(exc)
            status = err.status
            error = err.message
            await _error(send, err)
        finally:
            op = op or "metadata"
            self.obs.end(req, op, str(status), error, span_name(scope) if req.span is not None else "")

    async def _gateway_wide(
        self, method: str, path: str, scope: Scope, receive: Receive, send: Send
    ) -> tuple[str, int] | None:
        """The calls about the whole gateway (repository index, statistics of all models) and the refused ones;
        (op, status) when `path` is one of them, else None."""
        why = http_refusal(path)
        if why is not None:
            raise NotSupported(why)
        if path == "/v2/repository/index":
            if method != "POST":
                raise BadRequest(f"{method} is not allowed on {path}; use POST")
            body = await read_body(scope, receive, self.max_body)
            try:
                ready = bool(json.loads(body or b"{}").get("ready", False))
            except (ValueError, AttributeError):
                raise BadRequest("the repository index request must be a JSON object") from None
            await _json(send, 200, repository.index(self.dp.placer.view, ready))
            return "repository_index", 200
        if path.rstrip("/") == "/v2/models/stats" and method == "GET":
            stats = await repository.all_stats(self.dp.placer, self.dp.settings.backend_timeout)
            await _json(send, 200, stats)
            return "stats", 200
        return None

    async def _ready(self, send: Send, name: str, version: str | None, header: HeaderLookup) -> int:
        model = await self.dp.resolve_known(name, header)
        backend = self.dp.placer.warm_backend(model)
        if backend is not None:
            answer = await self.dp.call(Call("kserve", "GET", model, version, "ready"))
            await send_answer(send, answer)
            return answer.response.status
        # A cold model is ready to serve when some backend can load it; readiness does not load it.
        status = 200 if self.dp.model_servable(model) else 503
        await _empty(send, status, [(b"x-modelyard-model", model.encode())])
        return status


def span_name(scope: Scope) -> str:
    """`{method} {route}` with the names left out, as OpenTelemetry names HTTP server spans."""
    parts = scope["path"].split("/")
    if len(parts) >= 4 and parts[2] == "models":
        verb = parts[-1].rpartition(":")[2] if ":" in parts[-1] else None  # TF Serving's name:predict
        parts[3] = "{name}"
        if len(parts) >= 6 and parts[4] in ("versions", "labels"):
            parts[5] = "{version}"
        if verb is not None and len(parts) in (4, 6):
            parts[-1] += ":" + verb
    return f"{scope['method']} {'/'.join(parts)}"


def parse_kserve_path(path: str) -> tuple[str, str | None, str]:
    """`/v2/models/{name}[/versions/{v}][/infer|/ready|/config|/stats]` -> (name, version, op)."""
    parts = path.split("/")
    # ['', 'v2', 'models', name, ...]
    if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
        if len(parts) >= 3 and parts[2] == "repository":
            raise UnknownModel(
                "the repository API is not exposed by the gateway: models are loaded on demand; "
                "use the admin API (/admin/models/{name}/load) to warm one"
            )
        raise UnknownModel(f"no such path {path}; see /v2/models/{{name}}[/versions/{{v}}]/infer")
    name = unquote(parts[3])
    rest = parts[4:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version = unquote(rest[1])
        if not version.isdigit():
            raise BadRequest(f"version must be a positive integer, got {version!r} in {path}")
        rest = rest[2:]
    if not rest or rest == [""]:
        return name, version, ""
    if len(rest) == 1 and rest[0] in KSERVE_OPS:
        return name, version, rest[0]
    raise UnknownModel(f"no such path {path}; operations are infer, ready, config, stats or none (metadata)")


def parse_tfserving_path(path: str) -> tuple[str, str | None, str]:
    """`/v1/models/{name}[/versions/{v}][:predict|:classify|:regress|/metadata]` -> (name, version, op)."""
    parts = path.split("/")
    # ['', 'v1', 'models', name[:op], ...]
    if len(parts) < 4 or not parts[3]:
        raise UnknownModel(f"no such path {path}; see /v1/models/{{name}}[/versions/{{v}}]:predict")
    op = ""
    last = parts[-1]
    if ":" in last:
        # Model names can't hold ':', so the verb is what follows the last one.
        last, _, op = last.rpartition(":")
        if op not in ("predict", "classify", "regress"):
            raise UnknownModel(f"no such path {path}; the verbs are :predict, :classify and :regress")
        parts[-1] = last
    elif len(parts) > 4 and last == "metadata":
        op = "metadata"
        parts.pop()
    if parts and parts[-1] == "" and len(parts) > 4:
        parts.pop()
    name = unquote(parts[3])
    rest = parts[4:]
    version = None
    if len(rest) == 2 and rest[0] == "versions":
        version = unquote(rest[1])
        if not version.isdigit():
            raise BadRequest(f"version must be a positive integer, got {version!r} in {path}")
        rest = []
    elif len(rest) == 2 and rest[0] == "labels":
        raise BadRequest(
            f"version labels are not supported through modelyard (path {path}); call /versions/{{v}} or the "
            "model without a version"
        )
    if rest or not name:
        raise UnknownModel(
            f"no such path {path}; see /v1/models/{{name}}[/versions/{{v}}][:predict|:classify|:regress|/metadata]"
        )
    return name, version, op


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                declared = int(v)
            except ValueError:
                raise BadRequest("malformed Content-Length header") from None
            if declared > limit:
                raise BodyTooLarge(f"request body of {declared} bytes is over the gateway's limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the gateway's limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header_lookup(scope: Scope) -> HeaderLookup:
    """Any request header by lower-case name (ASGI servers lower-case them), read only when asked."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]

    def get(name: str) -> str | None:
        key = name.encode("latin-1")
        for k, v in raw:
            if k == key:
                return v.decode("latin-1")
        return None

    return get


def forward_headers(scope: Scope, extra: HeaderForwarding | None = None) -> list[tuple[str, str]]:
    out = []
    for k, v in scope["headers"]:
        if k in _FORWARD_RAW:  # compared as bytes: most headers are decoded only when they pass
            out.append((k.decode("latin-1"), v.decode("latin-1")))
        elif extra is not None and extra.passes(key := k.decode("latin-1")):
            out.append((key, v.decode("latin-1")))
    return out


async def send_answer(send: Send, answer: Answer) -> None:
    resp = answer.response
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]
    headers.append((b"content-length", str(len(resp.body)).encode()))
    headers.append((b"x-modelyard-model", answer.model.encode()))
    headers.append((b"x-modelyard-backend", answer.backend.encode()))
    if answer.cold:
        headers.append((b"x-modelyard-cold", b"1"))
    if answer.hedged:
        headers.append((b"x-modelyard-hedged", b"1"))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": resp.body})


async def _error(send: Send, err: HttpError) -> None:
    body = err.body()
    headers = [(k.encode(), v.encode()) for k, v in err.headers()]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, data: Any, body: bytes | None = None) -> None:
    payload = json.dumps(data).encode() if body is None else body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _empty(send: Send, status: int, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-length", b"0"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
