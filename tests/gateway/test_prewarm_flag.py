"""`--prewarm on|off` [MODELYARD_PREWARM]: on by default (docs/benchmarks.md), off by flag or environment, and
a gateway built with it runs the pre-warm task (`Gateway.prewarm`), one without it none."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.app import Gateway
from gateway.cli import build_parser, settings_from_args
from gateway.settings import Settings
from placement.settings import PlacementSettings


def prewarm(argv: list[str]) -> bool:
    args = build_parser().parse_args(["serve", "--admin-token", "t", *argv])
    return settings_from_args(args).placement.prewarm


def test_prewarm_is_on_by_default_and_off_by_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_PREWARM", raising=False)
    assert prewarm([]) is True
    assert prewarm(["--prewarm", "off"]) is False
    monkeypatch.setenv("MODELYARD_PREWARM", "off")
    assert prewarm([]) is False
    assert prewarm(["--prewarm", "on"]) is True
    with pytest.raises(SystemExit, match="--prewarm must be on or off"):
        prewarm(["--prewarm", "yes"])


def test_a_gateway_with_prewarm_runs_the_task_and_counts_its_results() -> None:
    url = "redis://127.0.0.1:1"  # no I/O before start()
    assert Gateway(Settings(), aioredis.from_url(url)).prewarm is None
    gateway = Gateway(Settings(placement=PlacementSettings(prewarm=True)), aioredis.from_url(url))
    assert gateway.prewarm is not None and gateway.prewarm.loader is gateway.placer.loader
    for result in ("loaded", "used", "loaded"):
        gateway.prewarm.on_result("m", result)
    registry = gateway.metrics.registry
    assert registry.get_sample_value("modelyard_prewarm_loads_total", {"result": "loaded"}) == 2
    assert registry.get_sample_value("modelyard_prewarm_loads_total", {"result": "used"}) == 1
