"""Errors of the placement layer.

They say what went wrong and what to do, in words a client can act on. They carry no HTTP or gRPC status:
the front ends map them once, in `gateway.errors`.
"""

from __future__ import annotations

from adapters.errors import ModelyardError


class PlacementError(ModelyardError):
    """Base of errors raised by placement."""


class InvalidSpec(PlacementError):
    """A name or a registration body is malformed."""


class NotFound(PlacementError):
    """A backend, model or route that is not registered."""


class UnknownModel(NotFound):
    """A data-plane request names neither a registered model nor a route."""


class Conflict(PlacementError):
    """The request contradicts what is registered (a route named like a model, ...)."""


class Unplaceable(PlacementError):
    """A model that no registered backend could ever hold (its memory_bytes fits nowhere)."""


class BadReference(PlacementError):
    """A route names models that are not registered, or that no one protocol can call together."""


class NoCapacity(PlacementError):
    """No copy can be placed now: every slot is held by a model that cannot be evicted, or no backend is up.

    `retry_after` is a hint in seconds.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoadFailed(PlacementError):
    """The backend refused or failed to load the model; `reason` is the backend's own words."""

    def __init__(self, message: str, reason: str, retry_after: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class LeaseLost(PlacementError):
    """This gateway's load lease was taken over (it expired); its writes are refused by the fencing token."""


class StoreUnavailable(PlacementError):
    """Redis, which holds the shared state, is unreachable or did not answer in time.

    Raised instead of redis-py's connection and timeout errors, once, where placement calls Redis
    (`placement.redis_health.RedisHealth.guard`). Warm requests don't need Redis; what does (a cold load, an
    admin write, a name this gateway has not heard of) gets this error. `retry_after` is a hint in seconds.
    """

    def __init__(self, message: str, retry_after: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
