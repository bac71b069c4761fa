"""The exception tree shared by modelyard, and the errors an adapter raises.

Adapters translate every runtime, transport and protocol failure into one of these at their boundary
(`raise ... from exc`), so nothing above them sees httpx or gRPC exceptions. No HTTP status lives here;
the gateway maps errors to HTTP and gRPC once, in `gateway.errors`.
"""

from __future__ import annotations


class ModelyardError(Exception):
    """Base of every error modelyard raises on purpose."""


class BackendError(ModelyardError):
    """A backend failed; `backend` is its id."""

    def __init__(self, message: str, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class BackendUnavailable(BackendError):
    """The backend could not be reached (connection refused, reset, DNS, ...). Nothing was answered."""


class BackendRefused(BackendUnavailable):
    """No connection could be opened to the backend (refused, no route): the request was not sent at all."""


class BackendTimeout(BackendError):
    """The backend did not answer in time."""


class ModelNotLoaded(BackendError):
    """The backend answered that it does not hold the model (it was unloaded, or the backend restarted)."""


class BackendLoadError(BackendError):
    """The backend refused or failed a load; the message is the backend's reason."""


class BackendUnloadError(BackendError):
    """The backend refused or failed an unload."""
