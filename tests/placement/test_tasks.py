"""Background loops end even when a cancel is swallowed (as redis-py can do mid-reply)."""

from __future__ import annotations

import asyncio

from placement.tasks import sleep_or_stop, stop_task


async def test_a_loop_that_swallows_cancellation_still_stops_on_its_event() -> None:
    stop = asyncio.Event()
    rounds = 0

    async def stubborn_loop() -> None:
        nonlocal rounds
        while True:
            try:
                if await sleep_or_stop(stop, 0.01):
                    return
                rounds += 1
            except asyncio.CancelledError:
                continue  # what a swallowed cancel looks like from the loop's side

    task = asyncio.create_task(stubborn_loop())
    await asyncio.sleep(0.05)
    await stop_task(task, stop, timeout=2.0)
    assert task.done() and rounds > 0


async def test_stopping_a_task_that_ignores_everything_is_bounded() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0.03)  # running inside its loop, where it ignores the cancel
    await stop_task(task, None, timeout=0.1)
    assert not task.done()  # left behind, but the caller was not held up
    release.set()
    await asyncio.wait_for(task, 1.0)
