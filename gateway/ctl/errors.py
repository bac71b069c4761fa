"""The client's one error type: a line a person can act on, and the exit status it ends with."""

from __future__ import annotations

USAGE = 2  # a bad fleet file or bad usage
REFUSED = 1  # the gateway refused a change, or could not be reached


class CtlError(Exception):
    def __init__(self, message: str, code: int = REFUSED) -> None:
        super().__init__(message)
        self.code = code
