"""The one place where modelyard errors become HTTP answers (`to_http`) and gRPC statuses (`to_grpc`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import grpc

from adapters.errors import BackendError, BackendTimeout, BackendUnavailable, ModelNotLoaded, ModelyardError
from placement.errors import (
    BadReference,
    Conflict,
    InvalidSpec,
    LeaseLost,
    LoadFailed,
    NoCapacity,
    NotFound,
    StoreUnavailable,
    Unplaceable,
)


class BadRequest(ModelyardError):
    """The client's request is malformed (path, method, JSON)."""


class MethodNotAllowed(BadRequest):
    """A known path called with a method it does not take (the message names the one to use)."""


class BodyTooLarge(ModelyardError):
    """The request body is over the configured limit."""


class Unauthorized(ModelyardError):
    """Missing or wrong admin token."""


class NotReady(ModelyardError):
    """The gateway has not reached Redis yet."""


class DeadlineExceeded(ModelyardError):
    """The client's deadline passed before an answer could be given (a cold load it waited for goes on)."""


class NotSupported(ModelyardError):
    """An operation of the protocol that the gateway does not offer (the message says what to use instead)."""


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    message: str
    retry_after: float | None = None

    def headers(self) -> list[tuple[str, str]]:
        out = [("content-type", "application/json")]
        if self.retry_after is not None:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after)))))
        if self.status == 401:
            out.append(("www-authenticate", 'Bearer realm="modelyard admin"'))
        return out

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


def to_http(exc: BaseException) -> HttpError:
    msg = str(exc)
    match exc:
        case Unauthorized():
            return HttpError(401, msg)
        case MethodNotAllowed():
            return HttpError(405, msg)
        case BadRequest() | InvalidSpec():
            return HttpError(400, msg)
        case NotFound():
            return HttpError(404, msg)
        case Conflict():
            return HttpError(409, msg)
        case NotSupported():
            return HttpError(501, msg)
        case BodyTooLarge():
            return HttpError(413, msg)
        case Unplaceable() | BadReference():
            return HttpError(422, msg)
        case NoCapacity() | StoreUnavailable():
            return HttpError(503, msg, exc.retry_after)
        case LoadFailed():
            return HttpError(503, msg, exc.retry_after)
        case LeaseLost() | NotReady():
            return HttpError(503, msg, 1.0)
        case BackendTimeout() | DeadlineExceeded():
            return HttpError(504, msg)
        case ModelNotLoaded() | BackendUnavailable():
            return HttpError(503, msg, 1.0)
        case BackendError():
            return HttpError(502, msg)
        case _:
            return HttpError(500, f"internal error: {type(exc).__name__}: {msg}")


@dataclass(frozen=True, slots=True)
class GrpcError:
    code: grpc.StatusCode
    message: str
    retry_after: float | None = None

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """`retry-after` (whole seconds) beside the hint in the message, for clients that read metadata."""
        if self.retry_after is None:
            return ()
        return (("retry-after", str(_seconds(self.retry_after))),)


def _seconds(retry_after: float) -> int:
    return max(1, math.ceil(retry_after))


def _unavailable(msg: str, retry_after: float) -> GrpcError:
    return GrpcError(grpc.StatusCode.UNAVAILABLE, f"{msg} (retry in {_seconds(retry_after)} s)", retry_after)


def to_grpc(exc: BaseException) -> GrpcError:
    """The gRPC status of an error, mirroring `to_http`: 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND,
    413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE with the retry hint, 504 -> DEADLINE_EXCEEDED.

    `Unplaceable` (HTTP 422: no registered backend could ever hold the model) is FAILED_PRECONDITION: retrying
    cannot help until an operator changes the registration, and UNAVAILABLE would invite clients' automatic
    retries. A model that cannot be placed *now* (every slot pinned or busy, no healthy backend) is
    `NoCapacity`: UNAVAILABLE, as the contract says. The backend's own gRPC errors never come here: they
    pass through with their code and details.
    """
    msg = str(exc)
    match exc:
        case Unauthorized():
            return GrpcError(grpc.StatusCode.UNAUTHENTICATED, msg)
        case BadRequest() | InvalidSpec():
            return GrpcError(grpc.StatusCode.INVALID_ARGUMENT, msg)
        case NotFound():
            return GrpcError(grpc.StatusCode.NOT_FOUND, msg)
        case Conflict():
            return GrpcError(grpc.StatusCode.ALREADY_EXISTS, msg)
        case NotSupported():
            return GrpcError(grpc.StatusCode.UNIMPLEMENTED, msg)
        case BodyTooLarge():
            return GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, msg)
        case Unplaceable() | BadReference():
            return GrpcError(grpc.StatusCode.FAILED_PRECONDITION, msg)
        case NoCapacity() | LoadFailed() | StoreUnavailable():
            return _unavailable(msg, exc.retry_after)
        case LeaseLost() | NotReady():
            return _unavailable(msg, 1.0)
        case BackendTimeout() | DeadlineExceeded():
            return GrpcError(grpc.StatusCode.DEADLINE_EXCEEDED, msg)
        case ModelNotLoaded() | BackendUnavailable():
            return _unavailable(msg, 1.0)
        case BackendError():
            # HTTP says 502; gRPC's own HTTP mapping turns 502 into UNAVAILABLE.
            return _unavailable(msg, 1.0)
        case _:
            return GrpcError(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {msg}")


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def grpc_status(number: int) -> grpc.StatusCode:
    """The StatusCode of a gRPC status number, as a backend answered it (UNKNOWN for a number grpc lacks)."""
    return _GRPC_CODES.get(number, grpc.StatusCode.UNKNOWN)
