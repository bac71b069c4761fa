"""`modelyard rollout start|status|promote|abort ROUTE`: the rollout API (`/admin/routes/{name}/rollout`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from gateway.ctl.client import AdminClient
from gateway.ctl.errors import USAGE, CtlError

RAW = argparse.RawDescriptionHelpFormatter
EXAMPLES = {
    "start": "modelyard rollout start classify --model resnet-v2 --steps 1,5,25,50,100 --step-seconds 60",
    "status": "modelyard rollout status classify",
    "promote": "modelyard rollout promote classify",
    "abort": "modelyard rollout abort classify",
}
HELP = {
    "start": "start a progressive rollout of a model on a route",
    "status": "show where a route's rollout stands",
    "promote": "end a rollout now, the new model taking all traffic",
    "abort": "stop a rollout and restore the route as it was",
}


def add_rollout(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "rollout",
        help="the rollout API from the terminal",
        formatter_class=RAW,
        description="examples:\n  " + "\n  ".join(EXAMPLES.values()),
    )
    actions = p.add_subparsers(dest="action", required=True)
    for action in EXAMPLES:
        a = actions.add_parser(
            action,
            help=HELP[action],
            formatter_class=RAW,
            description=f"{HELP[action]}.\n\nexample:\n  {EXAMPLES[action]}",
        )
        a.add_argument("route")
        a.add_argument("-o", "--output", choices=["text", "json"], default="text")
        if action == "start":
            a.add_argument("--model", required=True, help="the model rolled out (registered, the route's runtime)")
            a.add_argument("--steps", help="weights in percent, comma-separated, e.g. 1,5,25,50,100")
            a.add_argument("--step-seconds", type=float)
            a.add_argument("--min-requests", type=int, help="requests to the new model before a step's gates count")
            a.add_argument("--max-error-rate-increase", type=float)
            a.add_argument("--max-p99-ratio", type=float)
            a.add_argument("--min-shadow-agreement", type=float)
            a.add_argument("--shadow-first-seconds", type=float)
        common(a)


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model}
    if args.steps:
        try:
            body["steps"] = [int(s) for s in args.steps.split(",")]
        except ValueError:
            raise CtlError(f"--steps must be integers separated by commas, got {args.steps!r}", USAGE) from None
    for flag in ("step_seconds", "min_requests", "shadow_first_seconds"):
        if getattr(args, flag) is not None:
            body[flag] = getattr(args, flag)
    gates = {
        g: getattr(args, g)
        for g in ("max_error_rate_increase", "max_p99_ratio", "min_shadow_agreement")
        if getattr(args, g) is not None
    }
    if gates:
        body["gates"] = gates
    return body


def describe(state: dict[str, Any]) -> str:
    """One line: the route, the model rolled out, the phase and, while it runs, the step and the weight."""
    line = f"route {state.get('route')}: {state.get('model')} {state.get('phase')}"
    if state.get("phase") in ("shadow", "step"):
        weights = (state.get("spec") or {}).get("steps") or state.get("steps") or []
        if not all(isinstance(w, int | float) for w in weights):
            weights = []  # a history of step records, not the weights
        step = state.get("step")
        if isinstance(step, int) and weights:
            line += f", step {step + 1} of {len(weights)} ({', '.join(f'{w:g}%' for w in weights)})"
        line += f", weight {state.get('weight')}%"
    if state.get("reason"):
        line += f" ({state['reason']})"
    return line


def run_rollout(args: argparse.Namespace, client: AdminClient) -> int:
    path = f"/admin/routes/{args.route}/rollout"
    if args.action == "start":
        state = client.call("PUT", path, start_body(args))
    elif args.action == "status":
        state = client.call("GET", path)
    elif args.action == "promote":
        state = client.call("POST", f"{path}/promote")
    else:
        state = client.call("DELETE", path)
    print(json.dumps(state, indent=2) if args.output == "json" else describe(state or {"route": args.route}))
    return 0
