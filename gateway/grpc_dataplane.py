"""The gRPC data plane: a table of services and a raw-bytes front end on `grpc.aio`.

Thin on purpose, like the HTTP one: each RPC arrives as the bytes the client sent (no deserializer runs),
the gateway reads only what routing needs (the model's name and version, top-level fields of the request
message, see `adapters.protowire`), calls `DataPlane.call` (the same placement, cold loads, coalescing and
retry as HTTP), and answers with the backend's response bytes as they are, plus the initial metadata
`x-modelyard-model`, `x-modelyard-backend` and, when the request waited for a load, `x-modelyard-cold: 1`.

The services are data (`SERVICES`): service name -> method name -> what to do with it:
- `Forward`: place the model named in the request and forward the call (`ModelInfer`, `ModelMetadata`, ...);
- `Readiness`: forward when a copy is loaded, else answer without loading whether the model could be served;
- `Local`: answered by the gateway itself (`ServerLive`, `ServerReady`, `ServerMetadata`);
- `Wide`: about the whole gateway, from the request (`RepositoryIndex`, `ModelStatistics` of all models);
- `Refuse`: not offered, with a message saying what to use instead.
Each `Forward`/`Readiness` entry names its adapter `protocol`, how to read the model from the request bytes
(`read`) and how to rewrite it (`rewrite`, for routes). TF Serving's services (`PredictionService` and
`ModelService/GetModelStatus`) read the `model_spec` with modelyard's own TF Serving messages
(`adapters.tfserving_proto.messages`): no TensorFlow in the gateway.

Errors become statuses in one place, `gateway.errors.to_grpc`; a backend's own gRPC errors pass through with
their code and details.

The handlers here are grpc.aio's. `--grpc-server aio` (the default) serves them with `build_server`;
`--grpc-server threads` (`gateway.grpc_threads`) serves the same table from a thread pool and runs these same
handlers on the event loop for every call its warm fast path (`gateway.grpc_fastpath`) does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from adapters.errors import ModelyardError
from adapters.protowire import WireError, encode_bool, encode_string, replace_string, string_fields
from adapters.tfserving_proto.messages import MODEL_SERVICE, PREDICTION_SERVICE, read_model_spec, rewrite_model_name
from gateway import refusals, repository
from gateway.dataplane import Answer, Call, DataPlane
from gateway.errors import BadRequest, NotReady, NotSupported, grpc_status, to_grpc
from gateway.grpc_stream import STREAM_OP, StreamRelay
from gateway.http_dataplane import SERVER_METADATA
from gateway.metrics import Metrics
from gateway.routing import TARGET_HEADER, HeaderLookup
from gateway.settings import Settings

log = logging.getLogger("modelyard.grpc")

KSERVE_SERVICE = "inference.GRPCInferenceService"

# Client metadata that stays at the gateway: transport and gRPC's own keys, credentials, modelyard's controls.
# Everything else (traceparent, tracestate, x-request-id, triton-grpc-protocol-*, user metadata) goes on.
DROP_METADATA = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "user-agent",
        "content-type",
        "te",
        "host",
        "connection",
        "keep-alive",
        "upgrade",
        "transfer-encoding",
    }
)
DROP_PREFIXES = (":", "grpc-", "x-modelyard-")
# A client's deadline is answered a little before it passes, so that the client gets the gateway's
# DEADLINE_EXCEEDED with its message rather than its own bare "Deadline Exceeded": 5% of it, at most 50 ms.
DEADLINE_MARGIN_SHARE = 0.05
DEADLINE_MARGIN_MAX = 0.05


@dataclass(frozen=True, slots=True)
class ModelRef:
    """The model (or route) a request names, and the version it asks for (None: the backend's choice)."""

    name: str
    version: str | None


Reader = Callable[[bytes], ModelRef]
Rewriter = Callable[[bytes, str], bytes]


@dataclass(frozen=True, slots=True)
class Forward:
    """Place the model the request names and forward the call to the backend holding it."""

    protocol: str
    read: Reader
    rewrite: Rewriter


@dataclass(frozen=True, slots=True)
class Readiness:
    """Forward when a copy is loaded; otherwise answer `cold_answer(servable)` without loading the model."""

    protocol: str
    read: Reader
    rewrite: Rewriter
    cold_answer: Callable[[bool], bytes]


@dataclass(frozen=True, slots=True)
class Local:
    """Answered by the gateway itself: `answer(dataplane)` is the response message."""

    answer: Callable[[DataPlane], bytes]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Not offered through the gateway: UNIMPLEMENTED with `message`."""

    message: str
    streaming: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    """A bidirectional stream of requests, each placed like `Forward`'s (`gateway.grpc_stream`)."""

    read: Reader
    rewrite: Rewriter


# -- KServe v2 (inference.GRPCInferenceService) ---------------------------------------------------------------
# ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, ModelConfigRequest and ModelStatisticsRequest
# all carry the model's name in field 1 and its version in field 2 (strings).


def read_kserve_model(raw: bytes) -> ModelRef:
    try:
        found, _ = string_fields(raw, (1, 2))
    except WireError as exc:
        raise BadRequest(f"malformed request message: {exc}") from None
    name = found.get(1, "")
    if not name:
        raise BadRequest("the request names no model: set its model name")
    version = found.get(2) or None
    if version is not None and not version.isdigit():
        raise BadRequest(f"model version must be a positive integer, got {version!r}")
    return ModelRef(name, version)


def rewrite_kserve_model(raw: bytes, name: str) -> bytes:
    return replace_string(raw, 1, name)


@dataclass(frozen=True, slots=True)
class Wide:
    """About the whole gateway: `answer(dataplane, request bytes)` is the response message; when it gives None
    (the request names one model), the call is forwarded as `Forward(protocol, read, rewrite)` would."""

    answer: Callable[[DataPlane, bytes], Awaitable[bytes | None]]
    protocol: str = "kserve-grpc"
    read: Reader = read_kserve_model
    rewrite: Rewriter = rewrite_kserve_model


UnaryMethod = Forward | Readiness | Local | Refuse | Wide
Method = UnaryMethod | Stream


def _server_metadata(_: DataPlane) -> bytes:
    out = encode_string(1, str(SERVER_METADATA["name"])) + encode_string(2, str(SERVER_METADATA["version"]))
    for ext in SERVER_METADATA["extensions"]:
        out += encode_string(3, ext)
    return out


_KSERVE = Forward("kserve-grpc", read_kserve_model, rewrite_kserve_model)
_REPOSITORY = refusals.REPOSITORY
_SHARED_MEMORY = refusals.SHARED_MEMORY
_OPERATOR = refusals.OPERATOR

SERVICES: dict[str, dict[str, Method]] = {
    KSERVE_SERVICE: {
        "ServerLive": Local(lambda dp: encode_bool(1, True)),
        "ServerReady": Local(lambda dp: encode_bool(1, dp.ready)),
        "ServerMetadata": Local(_server_metadata),
        "ModelReady": Readiness("kserve-grpc", read_kserve_model, rewrite_kserve_model, lambda ok: encode_bool(1, ok)),
        "ModelMetadata": _KSERVE,
        "ModelInfer": _KSERVE,
        "ModelConfig": _KSERVE,
        "ModelStatistics": Wide(repository.grpc_statistics),
        "ModelStreamInfer": Stream(read_kserve_model, rewrite_kserve_model),
        "RepositoryIndex": Wide(repository.grpc_index),
        "RepositoryModelLoad": Refuse(_REPOSITORY),
        "RepositoryModelUnload": Refuse(_REPOSITORY),
        "SystemSharedMemoryStatus": Refuse(_SHARED_MEMORY),
        "SystemSharedMemoryRegister": Refuse(_SHARED_MEMORY),
        "SystemSharedMemoryUnregister": Refuse(_SHARED_MEMORY),
        "CudaSharedMemoryStatus": Refuse(_SHARED_MEMORY),
        "CudaSharedMemoryRegister": Refuse(_SHARED_MEMORY),
        "CudaSharedMemoryUnregister": Refuse(_SHARED_MEMORY),
        "TraceSetting": Refuse(f"TraceSetting is {_OPERATOR}"),
        "LogSettings": Refuse(f"LogSettings is {_OPERATOR}"),
    },
}


# -- TF Serving (tensorflow.serving.PredictionService, tensorflow.serving.ModelService) ----------------------
def _tfserving(message: str) -> Forward:
    """Forwarding of a TF Serving request whose `model_spec` names the model."""

    def read(raw: bytes) -> ModelRef:
        try:
            spec = read_model_spec(message, raw)
        except ValueError as exc:
            raise BadRequest(f"malformed {message}: {exc}") from None
        if not spec.name:
            raise BadRequest(f"the {message} names no model: set model_spec.name")
        if spec.version_label:
            raise BadRequest(
                f"version labels are not supported through modelyard (model_spec.version_label "
                f"{spec.version_label!r}); set model_spec.version or leave it out"
            )
        return ModelRef(spec.name, None if spec.version is None else str(spec.version))

    return Forward("tfserving-grpc", read, lambda raw, name: rewrite_model_name(message, raw, name))


SERVICES[PREDICTION_SERVICE] = {
    "Predict": _tfserving("PredictRequest"),
    "Classify": _tfserving("ClassificationRequest"),
    "Regress": _tfserving("RegressionRequest"),
    "MultiInference": _tfserving("MultiInferenceRequest"),
    "GetModelMetadata": _tfserving("GetModelMetadataRequest"),
}
SERVICES[MODEL_SERVICE] = {
    # Status of a cold model loads it, as metadata does: TF Serving reports versions only of a loaded model.
    "GetModelStatus": _tfserving("GetModelStatusRequest"),
    "HandleReloadConfigRequest": Refuse(
        "model control is modelyard's: register models with PUT /admin/models/{name}; the gateway sends each "
        "TF Serving backend its model list itself"
    ),
}


def metadata_lookup(metadata: Sequence[tuple[str, str | bytes]] | None) -> HeaderLookup:
    """Any metadata value by lower-case key (grpc lower-cases them), read only when asked."""

    def get(name: str) -> str | None:
        for key, value in metadata or ():
            if key == name:
                return value.decode("latin-1") if isinstance(value, bytes) else value
        return None

    return get


def forward_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[tuple[str, str]]:
    """The client's metadata worth passing on; binary (`-bin`) values as latin-1 strings, one char per byte."""
    out: list[tuple[str, str]] = []
    for key, value in metadata or ():
        k = key.lower()
        if k in DROP_METADATA or k.startswith(DROP_PREFIXES):
            continue
        out.append((k, value.decode("latin-1") if isinstance(value, bytes) else value))
    return out


Handler = Callable[[bytes, Any], Awaitable[bytes]]


class GrpcDataPlane:
    """Builds one raw-bytes handler per method of `services`; see the module docstring."""

    def __init__(
        self, dataplane: DataPlane, metrics: Metrics, services: dict[str, dict[str, Method]] | None = None
    ) -> None:
        self.dp = dataplane
        self.metrics = metrics
        self.obs = dataplane.obs  # counts, times, traces and logs each call (gateway.observe)
        self.services = SERVICES if services is None else services

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        out = []
        for service, methods in self.services.items():
            table = {}
            for name, method in methods.items():
                if isinstance(method, Stream):
                    table[name] = grpc.stream_stream_rpc_method_handler(self._stream(f"/{service}/{name}", method))
                elif isinstance(method, Refuse) and method.streaming:
                    table[name] = grpc.stream_stream_rpc_method_handler(self._refuse_stream(name, method))
                else:
                    table[name] = grpc.unary_unary_rpc_method_handler(self._handler(service, name, method))
            out.append(grpc.method_handlers_generic_handler(service, table))
        return out

    def _handler(self, service: str, op: str, method: UnaryMethod) -> Handler:
        path = f"/{service}/{op}"

        async def handle(body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            code = "OK"
            error = None
            req = self.obs.begin("grpc", context.invocation_metadata(), path[1:])
            if req.span is not None:
                req.span.set_attributes({"rpc.system": "grpc", "rpc.service": service, "rpc.method": op})
            try:
                try:
                    if isinstance(method, Local):
                        return method.answer(self.dp)
                    if isinstance(method, Refuse):
                        raise NotSupported(method.message)
                    if not self.dp.ready:
                        raise NotReady("the gateway has not reached Redis yet; try again in a moment")
                    if isinstance(method, Wide):
                        answered = await method.answer(self.dp, body)
                        if answered is not None:
                            return answered
                    ref = method.read(body)
                    header = metadata_lookup(context.invocation_metadata())
                    if isinstance(method, Readiness):
                        cold, header = await self._cold_readiness(method, ref, header, context)
                        if cold is not None:
                            return cold
                    call = Call(
                        method.protocol,
                        path,
                        ref.name,
                        ref.version,
                        op,
                        body,
                        forward_metadata(context.invocation_metadata()),
                        deadline=_deadline(context),
                        rewrite=method.rewrite,
                        header=header,
                    )
                    answer = await self.dp.call(call)
                except ModelyardError as exc:
                    err = to_grpc(exc)
                    code, error = err.code.name, err.message
                    await context.abort(err.code, err.message, err.trailing_metadata())
                except Exception as exc:  # a bug: the client gets INTERNAL with its name, the log the traceback
                    log.exception("%s failed", path)
                    err = to_grpc(exc)
                    code, error = err.code.name, err.message
                    await context.abort(err.code, err.message)
                req.backend = answer.backend  # the copy that answered (a hedge's, when it won)
                await context.send_initial_metadata(_answer_metadata(answer))
                resp = answer.response
                if resp.status != 0:
                    status = grpc_status(resp.status)
                    code, error = status.name, resp.details
                    await context.abort(status, resp.details)
                return resp.body
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                self.obs.end(req, op, code, error)

        return handle

    async def _cold_readiness(
        self, method: Readiness, ref: ModelRef, header: HeaderLookup, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[bytes | None, HeaderLookup]:
        """(None, lookup) when a copy is loaded: the backend answers, and `lookup` makes a route resolve to the
        model chosen here. Else (whether the model could be served, lookup)."""
        model = await self.dp.resolve_known(ref.name, header)  # a name created through another gateway
        if self.dp.placer.warm_backend(model) is not None:
            return None, lambda name: model if name == TARGET_HEADER else header(name)
        await context.send_initial_metadata((("x-modelyard-model", model),))
        return method.cold_answer(self.dp.model_servable(model)), header

    def _stream(self, path: str, method: Stream) -> Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]]:
        async def handle(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            code = "OK"
            error = None
            req = self.obs.begin("grpc", context.invocation_metadata(), path[1:])
            metadata = context.invocation_metadata()
            relay = StreamRelay(
                self.dp,
                path,
                method.read,
                method.rewrite,
                forward_metadata(metadata),
                metadata_lookup(metadata),
                _deadline(context),
            )
            try:
                async for item in relay.run(requests):
                    if isinstance(item, bytes):
                        yield item
                    else:
                        code, error = item.code.name, item.details
                        await context.abort(item.code, item.details)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                req.backend = ",".join(relay.backends)
                self.obs.end(req, STREAM_OP, code, error)

        return handle

    def _refuse_stream(self, op: str, method: Refuse) -> Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]]:
        async def handle(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            self.obs.end(self.obs.begin("grpc", None), op, "UNIMPLEMENTED", method.message)
            err = to_grpc(NotSupported(method.message))
            await context.abort(err.code, err.message)
            yield b""  # never reached: makes this an async generator, as grpc wants for stream handlers

        return handle


def _deadline(context: grpc.aio.ServicerContext[bytes, bytes]) -> float | None:
    left: float | None = context.time_remaining()
    if left is None:
        return None
    margin = min(DEADLINE_MARGIN_MAX, left * DEADLINE_MARGIN_SHARE)
    return asyncio.get_running_loop().time() + left - margin


def _answer_metadata(answer: Answer) -> tuple[tuple[str, str], ...]:
    md = [*answer.response.headers, ("x-modelyard-model", answer.model), ("x-modelyard-backend", answer.backend)]
    if answer.cold:
        md.append(("x-modelyard-cold", "1"))
    if answer.hedged:
        md.append(("x-modelyard-hedged", "1"))
    return tuple(md)


class GrpcPortError(RuntimeError):
    """The gRPC port could not be bound."""


def build_server(grpc_dp: GrpcDataPlane, settings: Settings) -> grpc.aio.Server:
    """A grpc.aio server with the data plane's handlers, bound to `--host`/`--grpc-port` (not started yet).

    Messages over `--max-body-bytes` are refused by grpc itself with RESOURCE_EXHAUSTED ("Received message
    larger than max (N vs. LIMIT)") before any handler runs. SO_REUSEPORT is off, so a port already in use
    fails here instead of being shared with another process.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers(tuple(grpc_dp.handlers()))
    host = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        why = _bind_problem(settings.host, settings.grpc_port)
        raise GrpcPortError(f"cannot listen for gRPC on {address} (--grpc-port): {why}")
    return server


def _bind_problem(host: str, port: int) -> str:
    """Why binding failed, in the OS's words (grpc only says that it failed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return "grpc could not bind it"
