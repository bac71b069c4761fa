"""The live placement page (/ui) in a real headless Chromium, against a real gateway and real Tritons: it shows
each backend's models, most recently used first, and follows loads and evictions by itself.

Set MODELYARD_UI_SCREENSHOT=path/to.png to keep a screenshot of the page at the end (docs/ui.png is one)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.localstack.stack import GatewayProcess, LocalStack
from tests.browser import Browser, find_chromium
from tests.gateway.conftest import TOKEN, StartGateway, infer_body

# What the page shows: backend -> [(model, state)] in the page's order, and the first summary figure.
SHOWN = """JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-backend]')].map(card =>
  [card.dataset.backend,
   [...card.querySelectorAll('tr[data-model]')].map(r => [r.dataset.model, r.dataset.state])])))"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = (
            "NO CHROMIUM FOUND: the live placement page was NOT tested in a browser. Install Debian's chromium "
            "(apt-get install chromium; .ci/run does) or set MODELYARD_CHROMIUM to a Chromium binary."
        )
        print(f"\n*** {reason} ***", file=sys.stderr)
        pytest.skip(reason)
    return path


def call(gw: GatewayProcess, model: str) -> str:
    r = httpx.post(f"{gw.url}/v2/models/{model}/infer", json=infer_body([1.0]), timeout=120)
    assert r.status_code == 200, r.text
    return r.headers["x-modelyard-backend"]


def shown(browser: Browser) -> dict[str, list[list[str]]]:
    value: dict[str, list[list[str]]] = json.loads(browser.evaluate(SHOWN))
    return value


def wait_shown(browser: Browser, want: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
    """Wait for the page to refresh by itself (no reload) until `want` holds of what it shows."""
    deadline = time.monotonic() + timeout
    while True:
        seen = shown(browser)
        if want(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"the page shows {seen}: {browser.evaluate('document.body.innerText')}")
        time.sleep(0.2)


def test_the_page_shows_each_backends_models_and_follows_loads_and_evictions(
    stack: LocalStack, start_gateway: StartGateway, new_loads: Callable[[], list[str]], chromium: str, tmp_path: Path
) -> None:
    gw = start_gateway("--eviction", "lru")  # the page marks the least recently used copy as next to go
    stack.register(capacity=1, models=["m030", "m031", "m032"])  # two Tritons, one slot each
    first = call(gw, "m030")
    second = call(gw, "m031")
    assert {first, second} == {"triton-0", "triton-1"}

    with Browser(chromium) as browser:
        assert httpx.get(f"{gw.url}/ui").status_code == 401  # the page itself needs the token
        browser.goto(f"{gw.url}/ui?token={TOKEN}")
        seen = wait_shown(
            browser, lambda s: s.get(first) == [["m030", "ready"]] and s.get(second) == [["m031", "ready"]]
        )
        assert set(seen) == {"triton-0", "triton-1"}
        assert browser.evaluate("location.search") == ""  # the token left the address bar
        assert "2 / 2" in browser.evaluate("document.getElementById('summary').innerText")

        # m031 is used again, so m030 is the least recently used: m032 takes its slot. The page follows.
        call(gw, "m031")
        evicted_from = call(gw, "m032")
        assert evicted_from == first
        wait_shown(browser, lambda s: s.get(first) == [["m032", "ready"]] and s.get(second) == [["m031", "ready"]])
        stat = 'document.querySelector(\'[data-backend="{}"] [data-stat="{}"]\').innerText'
        browser.wait_for(f"parseFloat({stat.format(first, 'evictions_per_minute')}) > 0")
        events = browser.wait_for(
            "[...document.querySelectorAll('#events li[data-event]')].map(li => li.innerText).join('\\n')"
        )
        assert f"evicted m030 from {first}" in events and f"loaded m032 on {first}" in events
        assert browser.evaluate(stat.format(first, "hit_ratio")) == "0.0 %"  # m030 and m032: a miss each
        assert browser.evaluate(stat.format(second, "hit_ratio")) == "50.0 %"  # m031: a miss, then a hit
        assert browser.evaluate(stat.format(second, "evictions_per_minute")) == "0.0"
        browser.screenshot(tmp_path / "ui.png")
        keep = os.environ.get("MODELYARD_UI_SCREENSHOT")
        if keep:
            browser.screenshot(Path(keep))
    assert (tmp_path / "ui.png").stat().st_size > 10_000
