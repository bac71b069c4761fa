"""Stopping background tasks without trusting cancellation alone.

A cancel that lands while redis-py awaits a reply can be swallowed (seen with redis-py 8.1 on Python 3.11:
about one in ten cancels of an in-flight EVALSHA), leaving a `while True` loop running forever. Loops here
therefore also watch a stop event, and a stop never waits longer than its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("modelyard.tasks")


async def stop_task(task: asyncio.Task[Any] | None, stop: asyncio.Event | None = None, timeout: float = 5.0) -> None:
    """Ask `task` to end (its stop event, then a cancel) and wait for it, at most `timeout` seconds."""
    if task is None or task.done():
        return
    if stop is not None:
        stop.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("task %s did not stop within %.1f s; left behind", task.get_name(), timeout)
        return
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; True if `stop` was set meanwhile (the loop should end)."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return stop.is_set()
    return True
