"""Planner actions as the engine records and tells them, and the version weight rule.

``action_json`` is what the journal and events store; ``describe`` is the one line an
event shows; ``shift_weight`` is how a version's row follows its share of new sessions.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from skewless.controller.store import VersionRow
from skewless.core.plan import (
    Action,
    AddToTable,
    DrainInstance,
    FinishRollout,
    RetireVersion,
    RunSmoke,
    SetWeights,
    StartInstance,
    StopInstance,
)


def action_json(action: Action) -> dict[str, Any]:
    data = asdict(action)
    for k, v in data.items():
        if hasattr(v, "value"):
            data[k] = v.value
    return data


def describe(action: Action) -> str:
    match action:
        case StartInstance():
            return f"start {action.instance_id} ({action.version})"
        case RunSmoke():
            return f"smoke-check {action.instance_id}"
        case AddToTable():
            return f"add {action.instance_id} to the route table"
        case DrainInstance():
            return f"drain {action.instance_id}"
        case StopInstance():
            return f"stop {action.instance_id}"
        case SetWeights():
            shares = ", ".join(f"{v} {w:.0%}" for v, w in action.weights)
            return f"new sessions: {shares}"
        case RetireVersion():
            return f"retire {action.version} ({action.reason})"
        case FinishRollout():
            return f"rollout {action.state.value}: {action.reason}"
    return action.key  # pragma: no cover


def gist(waiting_for: str | None) -> str | None:
    """A waiting reason without its clock and rate readings: "last pinned 3 s ago" or
    "carries 52 req/s" ticking is not news (status shows the live text)."""
    return re.sub(r"\d+(\.\d+)?(?= ?(s|ms|req/s)\b)", "#", waiting_for) if waiting_for else None


def shift_weight(v: VersionRow, weight: float, now: float) -> VersionRow:
    """A version's row after its share of new sessions becomes ``weight``.

    Weight > 0 makes it ``live`` (``live_since`` set the first time); dropping to 0 makes
    a live version ``draining`` and starts ``weight_zero_since``. Retired stays retired.
    """
    if v.state == "retired" and weight == 0.0:
        return v
    if weight > 0:
        return VersionRow(
            app=v.app,
            version=v.version,
            state="live",
            weight=weight,
            live_since=v.live_since if v.live_since is not None else now,
            weight_zero_since=None,
        )
    if v.weight == 0.0 and v.state != "live":
        return v
    return VersionRow(
        app=v.app,
        version=v.version,
        state="draining" if v.live_since is not None else v.state,
        weight=0.0,
        live_since=v.live_since,
        weight_zero_since=v.weight_zero_since if v.weight == 0.0 else now,
    )
