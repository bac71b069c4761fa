"""What `apply` does: the difference between a fleet file and a gateway's registry, and its writing.

`make_plan` compares field by field and checks what a single entry can't show (a route naming a model that
neither the file nor the gateway has, models of several runtimes in one route, a pruned model a kept route
still uses), so that a plan that is returned can be written. `execute` writes it in dependency order:
backends, models (in bulk), routes; then, with prune, routes, models and backends that the file leaves out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from gateway.ctl.client import AdminClient
from gateway.ctl.errors import USAGE, CtlError
from gateway.ctl.fleet import KINDS, SINGULAR, Fleet

BULK = 500  # models per PUT /admin/models
PROGRESS_FROM = 50  # objects to write from which progress goes to stderr


@dataclass(frozen=True)
class Action:
    kind: str  # backends | models | routes
    name: str
    verb: str  # created | updated | unchanged | deleted | held (a route whose rollout is running)
    body: dict[str, Any] | None = None
    before: dict[str, Any] | None = None

    @property
    def changes(self) -> bool:
        """Whether `execute` writes anything for it."""
        return self.verb not in ("unchanged", "held")

    def line(self) -> str:
        if self.verb == "held":
            return (
                f"route/{self.name} held: a rollout is running on it; left as it is "
                f"(modelyard rollout status|promote|abort {self.name})"
            )
        return f"{SINGULAR[self.kind]}/{self.name} {self.verb}"

    def field_changes(self) -> list[str]:
        """`field: old -> new` for each top-level field an update changes."""
        if self.verb != "updated" or self.body is None or self.before is None:
            return []
        return [
            f"  {k}: {_short(self.before.get(k))} -> {_short(self.body.get(k))}"
            for k in self.body
            if self.body.get(k) != self.before.get(k)
        ]


def _short(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def make_plan(desired: Fleet, current: Fleet, prune: bool, path: str) -> list[Action]:
    actions: list[Action] = []
    for kind in KINDS:
        have = current.of(kind)
        for name, body in desired.of(kind).items():
            old = have.get(name)
            verb = "created" if old is None else "unchanged" if old == body else "updated"
            actions.append(Action(kind, name, verb, body, old))
    if prune:
        for kind in reversed(KINDS):
            for name in current.of(kind):
                if name not in desired.of(kind):
                    actions.append(Action(kind, name, "deleted", None, current.of(kind)[name]))
    _check_references(desired, current, prune, path)
    return actions


def _check_references(desired: Fleet, current: Fleet, prune: bool, path: str) -> None:
    """Every model a route names exists after the apply, with one runtime per route; names stay distinct."""
    models = dict(desired.models) if prune else {**current.models, **desired.models}
    routes = dict(desired.routes) if prune else {**current.routes, **desired.routes}
    for name, route in routes.items():
        # Without --prune nothing is deleted, so only the file's routes can name a missing model.
        where = f"routes ({name})" if name in desired.routes else f"the gateway's route {name!r}"
        named = [s["model"] for s in route["splits"]] + [s["model"] for s in route.get("shadows") or []]
        missing = [m for m in dict.fromkeys(named) if m not in models]
        if missing:
            raise CtlError(
                f"{path}: {where}: names model(s) {missing} that are neither in the file nor registered", USAGE
            )
        runtimes = sorted({models[m]["runtime"] for m in named})
        if len(runtimes) > 1:
            raise CtlError(f"{path}: {where}: mixes runtimes {runtimes}; make one route per runtime", USAGE)
    clash = sorted(set(models) & set(routes))
    if clash:
        raise CtlError(f"{path}: {clash} would be both a model and a route; a route can't share a model's name", USAGE)


def hold_rollouts(client: AdminClient, actions: list[Action]) -> list[Action]:
    """Routes the plan would change or delete while a rollout runs on them are held instead: the rollout owns
    their weights until it is promoted or aborted, and a file written before it can't know them."""
    out = []
    for a in actions:
        if a.kind == "routes" and a.verb in ("updated", "deleted") and _rollout_running(client, a.name):
            a = Action(a.kind, a.name, "held", a.body, a.before)
        out.append(a)
    return out


def _rollout_running(client: AdminClient, route: str) -> bool:
    try:
        state = client.call("GET", f"/admin/routes/{route}/rollout")
    except CtlError as exc:
        if ": 404:" in str(exc):  # no rollout on the route (or a gateway without rollouts)
            return False
        raise
    return isinstance(state, dict) and state.get("phase") in ("shadow", "step")


def execute(client: AdminClient, actions: list[Action], out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Write the plan; one line per object on `out` (stdout), progress on `err` (stderr) for large plans.
    CtlError on the first refusal."""
    out = out or sys.stdout
    err = err or sys.stderr
    writes = [a for a in actions if a.changes]
    progress = _Progress(len(writes), err) if len(writes) >= PROGRESS_FROM else None
    for a in actions:
        if not a.changes:
            print(a.line(), file=out)
    puts = [a for a in writes if a.verb != "deleted"]
    deletes = [a for a in writes if a.verb == "deleted"]
    for a in [a for a in puts if a.kind == "backends"]:
        client.call("PUT", f"/admin/backends/{a.name}", a.body)
        _done([a], out, progress)
    models = [a for a in puts if a.kind == "models"]
    for i in range(0, len(models), BULK):
        chunk = models[i : i + BULK]
        client.call("PUT", "/admin/models", {"models": [a.body for a in chunk]})
        _done(chunk, out, progress)
    for a in [a for a in puts if a.kind == "routes"]:
        client.call("PUT", f"/admin/routes/{a.name}", a.body)
        _done([a], out, progress)
    for a in deletes:  # routes, then models, then backends (make_plan's order)
        client.call("DELETE", f"/admin/{a.kind}/{a.name}")
        _done([a], out, progress)


class _Progress:
    def __init__(self, total: int, err: TextIO) -> None:
        self.total, self.done, self.err = total, 0, err

    def __call__(self, n: int) -> None:
        self.done += n
        print(f"applying: {self.done}/{self.total} changes written", file=self.err, flush=True)


def _done(actions: list[Action], out: TextIO, progress: Callable[[int], None] | None) -> None:
    for a in actions:
        print(a.line(), file=out, flush=True)
    if progress is not None:
        progress(len(actions))
