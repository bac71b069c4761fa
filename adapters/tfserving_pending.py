"""Placeholder for TF Serving backends until their adapter lands (issue: TF Serving backends).

TF Serving backends can be registered, but every operation says plainly that it is not supported yet, and
the backend reports unhealthy so nothing is placed on it.
"""

from __future__ import annotations

from adapters.base import ForwardRequest, ForwardResponse, LoadRequest
from adapters.errors import BackendError

_MSG = "TF Serving backends are not supported by this version of modelyard yet (backend {})"


class PendingTFServingAdapter:
    def __init__(self, backend_id: str) -> None:
        self.backend_id = backend_id

    async def load(self, model: LoadRequest) -> None:
        raise BackendError(_MSG.format(self.backend_id), self.backend_id)

    async def unload(self, name: str) -> None:
        raise BackendError(_MSG.format(self.backend_id), self.backend_id)

    async def loaded(self) -> set[str]:
        raise BackendError(_MSG.format(self.backend_id), self.backend_id)

    async def healthy(self) -> bool:
        return False

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        raise BackendError(_MSG.format(self.backend_id), self.backend_id)

    async def aclose(self) -> None:
        return None
