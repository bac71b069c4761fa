"""A gateway SIGKILLed while it holds a load lease, and a lease holder SIGSTOPped past its lease then resumed."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.faults.conftest import CAPACITY, LEASE_TTL, FaultStack, offset, wait_for
from tests.faults.procs import signal_process
from tests.faults.recorder import CapacitySampler, Traffic, infer_body


def cold_request(url: str) -> None:
    """The holder's own request: it dies with the holder, so its fate isn't the clients' (they use `other`)."""
    try:
        httpx.post(f"{url}/v2/models/slowload/infer", json=infer_body([1.0]), timeout=30)
    except httpx.HTTPError:
        pass


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_lease_holder_dies_or_pauses(faults: FaultStack, fault: str) -> None:
    s = faults
    holder, other = s.add_gateway(), s.add_gateway()
    s.register()
    mark = len(s.loads())
    with CapacitySampler(s.tritons) as sampler:
        # a cold request through `holder` takes the lease of "slowload" (its initialize takes 2.5 s)
        first = threading.Thread(target=cold_request, args=(holder.url,), daemon=True)
        first.start()
        wait_for(
            "slowload loading",
            lambda: any(
                m["name"] == "slowload" and m["state"] == "loading"
                for rec in httpx.get(
                    f"{other.url}/admin/placement", headers={"Authorization": "Bearer faults-admin-token"}
                )
                .json()["backends"]
                .values()
                for m in rec["models"]
            ),
            interval=0.05,
        )
        sig = signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP
        signal_process(holder.proc, sig)
        paused = time.monotonic()
        with Traffic([other.url], ["slowload"], offset, threads=2, deadline=40) as t:
            t.wait_requests(10, timeout=60)
            if fault == "sigstop":
                time.sleep(max(0.0, LEASE_TTL + 1.0 - (time.monotonic() - paused)))  # the fault: paused past its lease
                signal_process(holder.proc, signal.SIGCONT)
                t.wait_requests(10)
        if fault == "sigkill":
            holder.proc = None
            s.gateways.remove(holder)
        took = s.wait_accounting(30)
    loads = [n for n in s.loads()[mark:] if n == "slowload"]
    print(f"\nlease holder {fault}: {t.counts}; slowload loaded {len(loads)}x; accounting whole after {took:.1f} s")
    assert all(p <= CAPACITY for p in sampler.peak), sampler.peak
    assert t.counts.bad == 0, t.counts.examples
    assert t.counts.ok > 0
    assert len(loads) <= 2, loads  # the holder's load and at most one by the survivor, never one per request
    ready = [b for b, names in s.placement_ready(other).items() if "slowload" in names]
    assert len(ready) == 1, ready  # max_copies 1: one copy, whatever the holder did when it woke
