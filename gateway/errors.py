"""The one place where modelyard errors become HTTP answers (and, with the gRPC front end, status codes)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from adapters.errors import BackendError, BackendTimeout, BackendUnavailable, ModelNotLoaded, ModelyardError
from placement.errors import (
    Conflict,
    InvalidSpec,
    LeaseLost,
    LoadFailed,
    NoCapacity,
    NotFound,
    Unplaceable,
)


class BadRequest(ModelyardError):
    """The client's request is malformed (path, method, JSON)."""


class BodyTooLarge(ModelyardError):
    """The request body is over the configured limit."""


class Unauthorized(ModelyardError):
    """Missing or wrong admin token."""


class NotReady(ModelyardError):
    """The gateway has not reached Redis yet."""


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
        case BadRequest() | InvalidSpec():
            return HttpError(400, msg)
        case NotFound():
            return HttpError(404, msg)
        case Conflict():
            return HttpError(409, msg)
        case BodyTooLarge():
            return HttpError(413, msg)
        case Unplaceable():
            return HttpError(422, msg)
        case NoCapacity():
            return HttpError(503, msg, exc.retry_after)
        case LoadFailed():
            return HttpError(503, msg, exc.retry_after)
        case LeaseLost() | NotReady():
            return HttpError(503, msg, 1.0)
        case BackendTimeout():
            return HttpError(504, msg)
        case ModelNotLoaded() | BackendUnavailable():
            return HttpError(503, msg, 1.0)
        case BackendError():
            return HttpError(502, msg)
        case _:
            return HttpError(500, f"internal error: {type(exc).__name__}: {msg}")
