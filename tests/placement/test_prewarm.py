"""Pre-warming learns its timing: a model whose requests come before its pre-warm is pre-warmed earlier (in the
pure `Prewarmer`, and as the gateway's `PrewarmTask` notices it on a real Redis with a fake clock)."""

from __future__ import annotations

import pytest

from placement.clock import FakeClock
from placement.prewarm import Prewarmer
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register
from tests.placement.test_loader import triton
from tests.placement.test_prewarm_task import regular, serve, task_of, tick


def test_a_late_prewarm_moves_the_next_one_earlier_and_a_wasted_one_moves_it_back() -> None:
    pw = Prewarmer(lead=2.0, early_step=0.1, max_early=0.2)
    assert pw.due_at("m", 100.0, 60.0, 1.0) == 157.0
    pw.late("m")
    assert pw.due_at("m", 100.0, 60.0, 1.0) == pytest.approx(100.0 + 54.0 - 3.0)
    pw.late("m"), pw.late("m")  # capped at max_early
    assert pw.due_at("m", 100.0, 60.0, 1.0) == pytest.approx(100.0 + 48.0 - 3.0)
    pw.started("m")
    pw.evicted("m")  # loaded and never used: perhaps too early, one step back
    assert pw.due_at("m", 100.0, 60.0, 1.0) == pytest.approx(100.0 + 54.0 - 3.0)
    assert pw.due_at("other", 100.0, 60.0, 1.0) == 157.0  # per model


async def test_the_leader_notices_a_request_that_came_before_its_prewarm_and_prewarms_earlier(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    placer = await make_placer(eviction_policy="nextuse")
    await register(placer, backends, {"b1": 2}, [triton("timer")])
    await regular(placer, clock, "timer", 4)  # every 10 s; its copy then unloaded
    results: list[tuple[str, str]] = []
    task = task_of(placer, clock, results)
    clock.advance(5)
    await tick(task)  # not due yet (8 s after its last request, less its load time)
    assert results == [] and task.prewarmer.due_at("timer", 0.0, 10.0, 0.0) == pytest.approx(8.0)
    clock.advance(1)
    await serve(placer, clock, "timer")  # 6 s after the last one: before the pre-warm, loaded on demand
    await tick(task)
    assert results == [] and task.prewarmer.due_at("timer", 0.0, 10.0, 0.0) == pytest.approx(7.0)
    # A request that finds its pre-warm done is not late: nothing moves.
    for bid in placer.view.ready_backends("timer"):
        assert await placer.loader.unload_copy("timer", bid, reason="admin")
    clock.advance(8)
    await tick(task)
    assert results == [("timer", "loaded")]
    clock.advance(1.5)
    await serve(placer, clock, "timer")
    await tick(task)
    assert results == [("timer", "loaded"), ("timer", "used")]
    assert task.prewarmer.due_at("timer", 0.0, 10.0, 0.0) == pytest.approx(7.0)
