"""Dead backends: passive outlier ejection on a fake clock, and the reconcile leader removing a dead backend's
copies (real Redis, fake backends), then reconciling with what the backend holds when it returns."""

from __future__ import annotations

from placement.clock import FakeClock
from placement.health import OutlierEjector
from placement.records import CopyState, ModelSpec
from tests.fakes import FakeBackend
from tests.placement.conftest import MakePlacer, register


def triton(name: str) -> ModelSpec:
    return ModelSpec.parse(name, {"runtime": "triton"})


def test_failures_in_a_row_eject_for_a_time_that_grows_with_each_ejection() -> None:
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    ej = OutlierEjector(clock, consecutive_failures=3, base_ejection=10, max_ejection=25)
    ej.on_eject = lambda b, s: seen.append((b, s))
    assert not ej.record("a", False, 4) and not ej.record("a", False, 4)
    ej.record("a", True, 4)  # a success breaks the streak
    assert [ej.record("a", False, 4) for _ in range(3)] == [False, False, True]
    assert ej.ejected("a") and not ej.ejected("b")
    clock.advance(10.1)
    assert not ej.ejected("a")
    for _ in range(3):
        ej.record("a", False, 4)
    clock.advance(19.9)
    assert ej.ejected("a")  # the second ejection lasts 20 s
    clock.advance(0.2)
    for _ in range(3):
        ej.record("a", False, 4)
    assert seen == [("a", 10), ("a", 20), ("a", 25)]  # capped at max_ejection
    clock.advance(25 + 25 + 1)
    ej.record("a", True, 4)  # clean for max_ejection after the last one: short again
    for _ in range(3):
        ej.record("a", False, 4)
    assert seen[-1] == ("a", 10)


def test_at_most_max_ejection_percent_of_the_backends_are_ejected_but_always_one() -> None:
    clock = FakeClock()
    ej = OutlierEjector(clock, consecutive_failures=1, max_ejection_percent=50)
    assert [ej.record(b, False, 4) for b in ("a", "b", "c", "d")] == [True, True, False, False]
    assert ej.ejected_count() == 2
    single = OutlierEjector(clock, consecutive_failures=1, max_ejection_percent=10)
    assert single.record("a", False, 2) and not single.record("b", False, 2)


async def test_a_dead_backends_copies_leave_the_placement_and_its_models_are_placed_elsewhere(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    leader, other = await make_placer(health_failures=2), await make_placer(health_failures=2)
    await register(leader, backends, {"b1": 2, "b2": 2}, [triton("m1"), triton("m2")])
    await other.sync.resync()
    b1 = await leader.ensure("m1")
    await other.sync.resync()
    for g in (leader, other):
        await g.reconciler.check_health()  # both have seen it up
    backends[b1].up = False  # killed

    await leader.reconciler.check_health()
    await leader.reconciler.reconcile()
    assert [c.state for c in await leader.store.copies_on(b1)] == [CopyState.READY]  # one failed check: not yet
    for _ in range(2):  # the other gateway is not the leader: its checks alone remove nothing
        await other.reconciler.check_health()
    assert other.view.reachable[b1] is False
    assert [c.state for c in await leader.store.copies_on(b1)] == [CopyState.READY]
    await leader.reconciler.reconcile_if_leader()  # takes the reconcile lease: its word counts
    await leader.reconciler.check_health()
    await leader.sync.resync()
    assert leader.warm_backend("m1") is None  # out of this gateway's rotation at once
    assert await leader.store.copies_on(b1) == []  # left the placement at once: slot freed
    assert leader.reconciler.dead_dropped == 1
    backends[b1].held.clear()  # a restarted server holds nothing
    await other.sync.resync()
    survivor = "b2" if b1 == "b1" else "b1"
    assert await other.ensure("m1") == survivor  # re-placed on the next request instead of failing

    backends[b1].up = True
    backends[b1].held = {"m2"}  # back from a partition, still holding a registered model: adopted, not reloaded
    await leader.reconciler.check_health()
    await leader.sync.resync()
    await leader.reconciler.reconcile()
    assert {c.model: c.state for c in await leader.store.copies_on(b1)} == {"m2": CopyState.READY}
    assert "m2" not in backends[b1].loads


async def test_one_gateway_that_cannot_reach_a_backend_does_not_remove_its_copies(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    leader = await make_placer(health_failures=1)
    await register(leader, backends, {"b1": 2}, [triton("m")])
    await leader.ensure("m")
    leader.view.reachable["b1"] = False  # only this gateway's view: Redis's healthy flag still says 1
    await leader.reconciler.reconcile()
    assert [c.state for c in await leader.store.copies_on("b1")] == [CopyState.READY]


async def test_a_backend_the_data_plane_found_refusing_is_dropped_at_the_leaders_next_failed_check(
    make_placer: MakePlacer, backends: dict[str, FakeBackend]
) -> None:
    leader = await make_placer(health_failures=3)
    await register(leader, backends, {"b1": 2}, [triton("m")])
    await leader.ensure("m")
    await leader.reconciler.check_health()
    await leader.reconciler.reconcile_if_leader()
    backends["b1"].up = False
    leader.view.reachable["b1"] = False  # what DataPlane does on a refused connection
    await leader.reconciler.check_health()
    assert await leader.store.copies_on("b1") == []


async def test_a_load_whose_gateway_lost_redis_is_kept_ready_when_the_backend_holds_it(
    make_placer: MakePlacer, backends: dict[str, FakeBackend], clock: FakeClock
) -> None:
    """A load finished on the backend while its gateway could not reach Redis to commit it (or died): the copy is
    left `loading` with no lease behind it. Reconciliation commits it as ready (no reload, no unload); a copy left
    loading that the backend does not hold is still removed after the load timeout."""
    placer = await make_placer(load_timeout=5.0)
    await register(placer, backends, {"b1": 3}, [triton("done"), triton("never")])
    for name in ("done", "never"):
        token = await placer.store.lease_try(name, 60_000)
        assert token is not None
        assert await placer.store.reserve("b1", name, 0, token, clock.now()) == "ok"
        await placer.store.r.delete(placer.store.k_lease(name))  # its gateway is gone: the lease lapsed
    backends["b1"].held.add("done")  # the backend finished this one
    await placer.reconciler.reconcile()
    states = {c.model: c.state for c in await placer.store.copies_on("b1")}
    assert states == {"done": CopyState.READY, "never": CopyState.LOADING}
    assert backends["b1"].loads == [] and backends["b1"].unloads == []
    clock.advance(placer.settings.stuck_after + 1)
    await placer.reconciler.reconcile()
    assert {c.model: c.state for c in await placer.store.copies_on("b1")} == {"done": CopyState.READY}
    assert backends["b1"].unloads == ["never"]
