"""Progressive rollouts: the decisions, pure (no I/O, no clock of their own), over counts and a time passed in.

A rollout moves one candidate model onto a route in steps (percent of the route's requests). The candidate's
weight is taken from the route's other models in proportion: at step `pct`, every other split keeps
`weight * (100 - pct)` and the candidate gets `pct * sum(weights)`. The others' weights keep their ratios, so
with a `sticky_header` the weighted rendezvous hash of `gateway.routing` moves only users from the others to
the candidate, never back nor between the others: each user moves at most once through all the steps.

Optionally a shadow phase comes first: the candidate gets a copy of every request (a 100% shadow) and no user
sees its answers; it must meet `min_shadow_agreement` and the latency gate against the primary's answers.

A step passes when the candidate has had `min_requests` requests in it and `step_seconds` have passed; the gates
are checked from the first `min_requests` on, and one that fails rolls back at once:
- error rate (5xx and backend errors) of the candidate <= the rest's + `max_error_rate_increase`;
- p99 latency of the candidate <= `max_p99_ratio` * the rest's;
- in the shadow phase, also agreement (agree / compared) >= `min_shadow_agreement`.
The rest are the route's other models over the same window (the step's); when they had no requests in it (a
100% step), the figures of the last window in which they had some stand in.

Passing the last step promotes: the candidate becomes the route's only split. A rollback or an abort puts back
the route as it was before the rollout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from placement.errors import InvalidSpec
from placement.records import RouteSpec, Shadow, Split, check_name
from placement.route_stats import ModelCounts, RouteCounts

RUNNING = frozenset({"shadow", "step"})
DEFAULT_STEPS = (1, 5, 25, 50, 100)


@dataclass(frozen=True, slots=True)
class Gates:
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_shadow_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_p99_ratio": self.max_p99_ratio,
            "min_shadow_agreement": self.min_shadow_agreement,
        }


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """The body of `PUT /admin/routes/{name}/rollout`; only `model` is required."""

    model: str
    steps: tuple[int, ...] = DEFAULT_STEPS
    step_seconds: float = 60.0
    min_requests: int = 200
    gates: Gates = field(default_factory=Gates)
    shadow_first_seconds: float = 0.0

    @staticmethod
    def parse(body: Any) -> RolloutSpec:
        example = '{"model": "b", "steps": [1, 5, 25, 50, 100], "step_seconds": 60, "min_requests": 200}'
        if not isinstance(body, dict):
            raise InvalidSpec(f"the body must be a JSON object like {example}")
        allowed = {"model", "steps", "step_seconds", "min_requests", "gates", "shadow_first_seconds"}
        unknown = set(body) - allowed
        if unknown:
            raise InvalidSpec(f"unknown field(s) {sorted(unknown)}; expected {sorted(allowed)}")
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidSpec(f"model is required: the name of the candidate model, as in {example}")
        check_name("model", model)
        steps = body.get("steps", list(DEFAULT_STEPS))
        if (
            not isinstance(steps, list)
            or not steps
            or not all(_is_int(s) and 0 < s <= 100 for s in steps)
            or any(a >= b for a, b in itertools.pairwise(steps))
        ):
            raise InvalidSpec(f"steps must be a non-empty increasing list of percents in 1..100, got {steps!r}")
        step_seconds = _number(body, "step_seconds", 60.0, 0)
        min_requests = body.get("min_requests", 200)
        if not _is_int(min_requests) or min_requests < 1:
            raise InvalidSpec(f"min_requests must be an integer of at least 1, got {min_requests!r}")
        shadow_first = _number(body, "shadow_first_seconds", 0.0, 0)
        raw_gates = body.get("gates") or {}
        if not isinstance(raw_gates, dict) or set(raw_gates) - set(Gates().to_json()):
            raise InvalidSpec(f"gates must be an object with fields {sorted(Gates().to_json())}, got {raw_gates!r}")
        agreement = raw_gates.get("min_shadow_agreement")
        if agreement is not None and (not _is_num(agreement) or not 0 <= agreement <= 1):
            raise InvalidSpec(f"gates.min_shadow_agreement must be null or a share in 0..1, got {agreement!r}")
        gates = Gates(
            _number(raw_gates, "max_error_rate_increase", 0.01, 0, "gates."),
            _number(raw_gates, "max_p99_ratio", 1.5, 0, "gates."),
            float(agreement) if agreement is not None else None,
        )
        return RolloutSpec(model, tuple(steps), step_seconds, min_requests, gates, shadow_first)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "steps": list(self.steps),
            "step_seconds": self.step_seconds,
            "min_requests": self.min_requests,
            "gates": self.gates.to_json(),
            "shadow_first_seconds": self.shadow_first_seconds,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> RolloutSpec:
        return RolloutSpec.parse(data)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a look at a running rollout decided: hold, advance (the phase or step passed) or rollback."""

    action: str
    reason: str = ""
    gate: dict[str, Any] | None = None


HOLD = Verdict("hold")


def routed(original: RouteSpec, model: str, phase: str, percent: int) -> RouteSpec:
    """The route as it is in a phase: `shadow` (candidate as a 100% shadow), `step` at `percent`, `promoted`."""
    shadows = tuple(s for s in original.shadows if s.model != model)
    others = [s for s in original.splits if s.model != model]
    if phase == "shadow":
        return RouteSpec(
            original.name, original.splits, (*shadows, Shadow(model, 100.0)), original.sticky_header, original.hedge
        )
    if phase == "promoted":
        return RouteSpec(original.name, (Split(model, 100),), shadows, original.sticky_header, original.hedge)
    total = sum(s.weight for s in others)
    splits = (*tuple(Split(s.model, s.weight * (100 - percent)) for s in others), Split(model, percent * total))
    return RouteSpec(original.name, splits, shadows, original.sticky_header, original.hedge)


def rest_of(counts: RouteCounts, original: RouteSpec, model: str) -> ModelCounts:
    """The route's other split models' counts, merged."""
    rest = ModelCounts()
    for s in original.splits:
        if s.model != model:
            rest = rest.merged(counts.model(s.model))
    return rest


def evaluate(state: dict[str, Any], window: RouteCounts, now: float) -> Verdict:
    """Decide on a running rollout from the counts of its current window (since its phase or step began)."""
    spec = RolloutSpec.from_json(state["spec"])
    original = RouteSpec.from_json(state["original"])
    gates = spec.gates
    rest = rest_of(window, original, spec.model)
    if rest.requests == 0 and state.get("reference"):
        rest = ModelCounts.from_json(state["reference"])
    elapsed = now - float(state["phase_started_at"])
    if state["phase"] == "shadow":
        sc = window.shadow(spec.model)
        sent = sc.n("sent")
        if sent < spec.min_requests:
            return HOLD
        failed_rate = sc.n("failed") / sent
        verdict = _error_gate(failed_rate, rest.error_rate, gates, sent, rest.requests)
        verdict = verdict or _p99_gate(sc.shadow.quantile_ms(0.99), sc.primary.quantile_ms(0.99), gates)
        agreement = sc.agreement
        if verdict is None and gates.min_shadow_agreement is not None and agreement is not None:
            if agreement < gates.min_shadow_agreement:
                verdict = Verdict(
                    "rollback",
                    f"shadow agreement {agreement:.4f} < min_shadow_agreement {gates.min_shadow_agreement}",
                    {"gate": "shadow_agreement", "candidate": round(agreement, 4), "limit": gates.min_shadow_agreement},
                )
        if verdict is not None:
            return verdict
        return Verdict("advance") if elapsed >= spec.shadow_first_seconds else HOLD
    cand = window.model(spec.model)
    if cand.requests < spec.min_requests:
        return HOLD
    verdict = _error_gate(cand.error_rate, rest.error_rate, gates, cand.requests, rest.requests)
    verdict = verdict or _p99_gate(cand.latency.quantile_ms(0.99), rest.latency.quantile_ms(0.99), gates)
    if verdict is not None:
        return verdict
    return Verdict("advance") if elapsed >= spec.step_seconds else HOLD


def _error_gate(cand: float, rest: float, gates: Gates, cand_n: int, rest_n: int) -> Verdict | None:
    limit = rest + gates.max_error_rate_increase
    if cand <= limit:
        return None
    return Verdict(
        "rollback",
        f"error rate {cand:.4f} (of {cand_n}) > the rest's {rest:.4f} (of {rest_n}) + {gates.max_error_rate_increase}",
        {"gate": "error_rate", "candidate": round(cand, 4), "rest": round(rest, 4), "limit": round(limit, 4)},
    )


def _p99_gate(cand: float | None, rest: float | None, gates: Gates) -> Verdict | None:
    if cand is None or rest is None or cand <= gates.max_p99_ratio * rest:
        return None
    limit = gates.max_p99_ratio * rest
    return Verdict(
        "rollback",
        f"p99 {cand:.1f} ms > {gates.max_p99_ratio} x the rest's {rest:.1f} ms",
        {"gate": "p99", "candidate_ms": cand, "rest_ms": rest, "limit_ms": round(limit, 3)},
    )


def start(route: RouteSpec, spec: RolloutSpec, now: float, counts: RouteCounts) -> tuple[dict[str, Any], RouteSpec]:
    """A new rollout's state and the route it begins with (shadow phase, else the first step)."""
    phase = "shadow" if spec.shadow_first_seconds > 0 else "step"
    state: dict[str, Any] = {
        "route": route.name,
        "model": spec.model,
        "spec": spec.to_json(),
        "original": route.to_json(),
        "phase": phase,
        "step": 0 if phase == "step" else None,
        "weight": spec.steps[0] if phase == "step" else 0,
        "reason": "",
        "gate": None,
        "version": 0,
        "started_at": now,
        "phase_started_at": now,
        "updated_at": now,
        "baseline": counts.to_json(),
        "reference": None,
        "history": [],
    }
    return state, routed(route, spec.model, phase, state["weight"])


def window_of(state: dict[str, Any], counts: RouteCounts) -> RouteCounts:
    return counts.minus(RouteCounts.from_json(state["baseline"]))


def step_figures(state: dict[str, Any], window: RouteCounts) -> dict[str, Any]:
    """The current window's figures: candidate, rest (and the shadow comparison in the shadow phase)."""
    original = RouteSpec.from_json(state["original"])
    out: dict[str, Any] = {
        "phase": state["phase"],
        "step": state["step"],
        "weight": state["weight"],
        "candidate": window.model(state["model"]).summary(),
        "rest": rest_of(window, original, state["model"]).summary(),
    }
    if state["phase"] == "shadow":
        sc = window.shadow(state["model"])
        out["shadow"] = {**sc.counts, "agreement": sc.agreement}
    return out


def apply(
    state: dict[str, Any], verdict: Verdict, now: float, counts: RouteCounts
) -> tuple[dict[str, Any], RouteSpec | None]:
    """The state after `verdict` (given the cumulative `counts` now), and the route to write (None: unchanged)."""
    if verdict.action == "hold":
        return state, None
    spec = RolloutSpec.from_json(state["spec"])
    original = RouteSpec.from_json(state["original"])
    window = window_of(state, counts)
    figures = {**step_figures(state, window), "result": "passed" if verdict.action == "advance" else "failed"}
    new = {**state, "history": [*state["history"], figures], "updated_at": now, "version": state["version"] + 1}
    if verdict.action == "rollback":
        new.update(phase="rolled_back", reason=verdict.reason, gate=verdict.gate)
        return new, original
    rest = rest_of(window, original, spec.model)
    if rest.requests > 0:
        new["reference"] = rest.to_json()
    nxt = 0 if state["phase"] == "shadow" else int(state["step"]) + 1
    new.update(baseline=counts.to_json(), phase_started_at=now)
    if nxt >= len(spec.steps):
        new.update(phase="promoted", reason="every step passed", weight=100)
        return new, routed(original, spec.model, "promoted", 100)
    new.update(phase="step", step=nxt, weight=spec.steps[nxt])
    return new, routed(original, spec.model, "step", spec.steps[nxt])


def end(state: dict[str, Any], phase: str, reason: str, now: float) -> tuple[dict[str, Any], RouteSpec]:
    """Promote (`promoted`) or abort (`aborted`) a running rollout at once."""
    original = RouteSpec.from_json(state["original"])
    new = {**state, "phase": phase, "reason": reason, "updated_at": now, "version": state["version"] + 1}
    if phase == "promoted":
        new["weight"] = 100
        return new, routed(original, state["model"], "promoted", 100)
    return new, original


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(body: dict[str, Any], key: str, default: float, minimum: float, where: str = "") -> float:
    v = body.get(key, default)
    if not _is_num(v) or v < minimum:
        raise InvalidSpec(f"{where}{key} must be a number of at least {minimum}, got {v!r}")
    return float(v)
