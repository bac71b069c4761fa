"""How long a SIGKILLed Triton's copies stay in the placement, and whether its model is served again elsewhere.

A stack of its own (real Redis, two Tritons, two `modelyard serve` processes; nothing shared with other runs):
`--models` models are loaded warm across the two Tritons, warm traffic goes through both gateways, then the Triton
holding the first model is SIGKILLed. Reported: seconds until no copy on it is `ready` in either gateway's
/admin/placement, seconds until the first model answers again (placed on the other Triton), and the answers
clients got meanwhile.

    .venv/bin/python -m loadtests.dead_backend
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from deploy.localstack.models import demo_model_names
from deploy.localstack.stack import GatewayProcess, LocalStack


def ready_on(gw: GatewayProcess, token: str, backend: str) -> list[str]:
    r = httpx.get(f"{gw.url}/admin/placement", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    models = r.json()["backends"].get(backend, {}).get("models", [])
    return [m["name"] for m in models if m["state"] == "ready"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args()
    names = demo_model_names(args.models)
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp), names, tritons=2) as stack:
        gws = [stack.add_gateway(), stack.add_gateway()]
        stack.register(capacity=args.models, models=names)
        with stack.admin() as admin:
            for n in names:
                admin.post(f"/admin/models/{n}/load").raise_for_status()
            victim_id = admin.get(f"/admin/models/{names[0]}").json()["copies"][0]["backend"]
        victim = stack.tritons[int(victim_id.rsplit("-", 1)[1])]
        answers: Counter[int] = Counter()
        stop = threading.Event()

        def traffic(gw: GatewayProcess) -> None:
            body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
            with httpx.Client(base_url=gw.url, timeout=60) as c:
                i = 0
                while not stop.is_set():
                    answers[c.post(f"/v2/models/{names[i % len(names)]}/infer", json=body).status_code] += 1
                    i += 1
                    time.sleep(0.02)

        threads = [threading.Thread(target=traffic, args=(gw,)) for gw in gws]
        for t in threads:
            t.start()
        time.sleep(2)
        os.killpg(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        gone = served = None
        while time.monotonic() < killed + 60 and (gone is None or served is None):
            if gone is None and not any(ready_on(gw, stack.token, victim_id) for gw in gws):
                gone = time.monotonic() - killed
            if served is None:
                r = httpx.post(
                    f"{gws[0].url}/v2/models/{names[0]}/infer",
                    json={"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
                    timeout=60,
                )
                if r.status_code == 200 and r.headers.get("x-modelyard-backend") != victim_id:
                    served = time.monotonic() - killed
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        print(f"killed {victim_id}; its copies left the placement after {gone} s; {names[0]} served elsewhere after")
        print(f"{served} s; answers during the run: {dict(answers)}")


if __name__ == "__main__":
    main()
