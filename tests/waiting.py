"""Waiting for a condition in tests: poll it until it holds or a deadline passes (never a bare sleep).

`eventually` for threads and plain test functions, `eventually_async` inside an event loop (it yields to the loop
between polls, so the tasks it waits for can run).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


def eventually(
    check: Callable[[], object],
    what: str = "the condition",
    timeout: float = 60.0,
    *,
    interval: float = 0.05,
    detail: Callable[[], object] | None = None,
    retry_on: tuple[type[Exception], ...] = (),
) -> float:
    """Return the seconds it took once `check()` is truthy; fail naming `what` when it is still false after
    `timeout` seconds. `detail()` is evaluated at that failure and appended (the state that was wrong then).
    Exceptions of a `retry_on` type from `check` (e.g. a process still down) count as false, the last one is named
    in the failure; any other exception propagates at once."""
    start = time.monotonic()
    last_error: Exception | None = None
    while True:
        try:
            if check():
                return time.monotonic() - start
        except retry_on as exc:
            last_error = exc
        if time.monotonic() - start > timeout:
            raise AssertionError(_failure(what, timeout, last_error, detail))
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], object], what: str = "the condition", timeout: float = 60.0, *, interval: float = 0.005
) -> None:
    """`eventually` inside an event loop: return once `check()` is truthy, awaiting `interval` between polls.
    `check` may be a coroutine function (a metric read through the gateway's own client, say): it is awaited."""
    start = time.monotonic()
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if time.monotonic() - start > timeout:
            raise AssertionError(_failure(what, timeout, None, None))
        await asyncio.sleep(interval)


def _failure(what: str, timeout: float, last_error: Exception | None, detail: Callable[[], object] | None) -> str:
    message = f"not within {timeout:g} s: {what}"
    if last_error is not None:
        message += f" (last error: {last_error!r})"
    if detail is not None:
        message += f" {detail()}"
    return message
