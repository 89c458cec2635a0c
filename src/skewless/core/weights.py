"""Shares of new sessions: how fast the target version may take them.

The target's share moves toward the next canary step as far as its ready capacity
carries it: ``ready * capacity >= share * total load * headroom`` (any share when there is
no load), rounded down to whole percents. It only grows while the rollout runs. Before
the next step it waits ``step_interval`` at the current one (the canary analysis, run by
the planner, fails the rollout instead of holding it). ``surge`` gives no share until its
full set is ready; a rollback ignores the steps. A version with no ready instance never
gets new sessions; if no old version has one, the target takes them all. The old
versions share the rest in proportion to what they had.

Why a share that follows capacity rather than steps alone: in a tight rolling fleet the
old version's load falls only once the new one takes sessions, and its floor (which
holds the next slot) falls only with its load; a share that grows with each new instance
lets that loop turn.
"""

from __future__ import annotations

import math

from skewless.core.capacity import EPS
from skewless.core.fleet_view import Draft, FleetView
from skewless.core.plan import SetWeights
from skewless.core.wording import plural, rps

WEIGHT_TOLERANCE = 5e-5
"""Weights closer than this count as equal (a store may keep fewer digits)."""


def shift_weights(fleet: FleetView, draft: Draft) -> None:
    """Propose the next weights of a progressing rollout (if they change)."""
    target = fleet.target
    current = fleet.weight(target)
    ready = fleet.serving.get(target, 0)
    desired = 0.0 if ready == 0 else max(current, _next_share(fleet, draft, current, ready))
    old = [v for v in fleet.old_versions() if fleet.serving[v] > 0]
    if not old:
        if ready == 0:
            draft.waits.append("no version of the app has a ready instance")
            return
        desired = 1.0
    weights = {v: 0.0 for v in fleet.active}
    weights[target] = desired
    rest = 1.0 - desired
    if rest > EPS:
        total_old = sum(fleet.weight(v) for v in old)
        if total_old > EPS:
            for v in old:
                weights[v] = rest * fleet.weight(v) / total_old
        else:
            weights[max(old, key=lambda v: (fleet.serving[v], v))] = rest
    set_weights(fleet, draft, weights)


def _next_share(fleet: FleetView, draft: Draft, current: float, ready: int) -> float:
    spec, target = fleet.spec, fleet.target
    steps = (1.0,) if spec.rollback_of is not None else spec.steps
    reached = sum(1 for s in steps if s <= current + EPS)
    if reached >= len(steps):
        return current
    goal = steps[reached]
    at_step = reached > 0 and current > EPS and abs(current - steps[reached - 1]) <= EPS
    since = fleet.snap.step_since
    if at_step and since is not None and fleet.now - since < spec.step_interval:
        left = spec.step_interval - (fleet.now - since)
        draft.waits.append(f"canary step {current:.0%} holds until {left:.0f} s more have passed")
        return current
    if spec.strategy == "surge" and ready < spec.instances:
        draft.waits.append(
            f"surge switches when all {spec.instances} instances of {target} are ready "
            f"({ready} are)"
        )
        return current
    share = capacity_share(fleet, ready)
    if share < goal - EPS:
        carry = ready * fleet.versions[target].capacity
        draft.waits.append(
            f"{target} gets {max(share, current):.0%} of new sessions: its "
            f"{plural(ready, 'ready instance')} carry {rps(carry)} req/s, {goal:.0%} of "
            f"{rps(fleet.total_load)} req/s * {spec.headroom:g} needs more"
        )
    return min(goal, share)


def capacity_share(fleet: FleetView, ready: int) -> float:
    """The share of all load that ``ready`` target instances carry with headroom."""
    if fleet.total_load <= EPS:
        return 1.0
    capacity = fleet.versions[fleet.target].capacity
    share = ready * capacity / (fleet.total_load * fleet.spec.headroom)
    return min(1.0, math.floor(share * 100 + EPS) / 100)


def set_weights(fleet: FleetView, draft: Draft, weights: dict[str, float]) -> None:
    """Propose ``weights`` (rounded to 4 decimals, summing to 1) unless already in place."""
    weights = _rounded(weights)
    if all(abs(fleet.weight(v) - w) <= WEIGHT_TOLERANCE for v, w in weights.items()):
        return
    target_weight = weights.get(fleet.target, 0.0)
    step = max(0, sum(1 for s in fleet.spec.steps if s <= target_weight + EPS) - 1)
    draft.actions.append(
        SetWeights(
            weights=tuple((v, weights[v]) for v in sorted(weights)),
            step=step,
            basis=fleet.snap.table_generation,
        )
    )


def _rounded(weights: dict[str, float]) -> dict[str, float]:
    """Weights to 4 decimals, still summing to 1 (the largest absorbs the rounding)."""
    out = {v: round(w, 4) for v, w in weights.items()}
    if out:
        largest = max(out, key=lambda v: (out[v], v))
        out[largest] = round(out[largest] + 1.0 - sum(out.values()), 4)
    return out
