"""The agent report (BRIEF "Agent report"): what runs on this host, as the controller
and ``GET /v1/status`` see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from skewless.agent.instance import AgentOptions, Instance
from skewless.core.desired import DesiredState
from skewless.core.supervise import Refuse, reported_state


def build_report(
    *,
    opts: AgentOptions,
    desired: DesiredState | None,
    desired_error: str | None,
    instances: Mapping[str, Instance],
    refused: Mapping[str, Refuse],
    now: float,
) -> dict[str, Any]:
    """One row per instance record, per refused instance and per desired instance that
    has neither (``stopped``: nothing runs and nothing will)."""
    rows: list[dict[str, Any]] = []
    for inst in instances.values():
        spec = desired.get(inst.id) if desired else None
        rows.append(
            {
                "id": inst.id,
                "app": inst.spec.app,
                "version": inst.spec.version,  # what runs, not what is asked for
                "state": reported_state(inst.state, spec.desired if spec else None).value,
                "address": f"{opts.advertise}:{inst.port}",
                "pid": inst.proc.pid if inst.proc else None,
                "restarts": inst.restarts,
                "health": inst.health,
                "reason": inst.reason,
                "desired": spec.desired if spec else None,
            }
        )
    if desired is not None:
        for spec in desired.instances:
            if spec.id in instances:
                continue
            refusal = refused.get(spec.id)
            row: dict[str, Any] = {
                "id": spec.id,
                "app": spec.app,
                "version": spec.version,
                "state": "stopped",
                "address": None,
                "pid": None,
                "restarts": 0,
                "health": None,
                "reason": None,
                "desired": spec.desired,
            }
            if refusal is not None:
                row.update(
                    state="starting" if refusal.waiting else "failed",
                    reason=refusal.reason,
                    refused=True,
                )
            rows.append(row)
    return {
        "host_id": opts.host_id,
        "slots": opts.slots,
        "generation": desired.generation if desired else 0,
        "time": now,
        "desired_error": desired_error,
        "instances": rows,
    }


def report_key(report: Mapping[str, Any]) -> object:
    """What must differ for a report to count as a change (not the clock, say)."""
    return (
        report["generation"],
        report["desired_error"],
        tuple(
            (
                r["id"],
                r["state"],
                r["pid"],
                r["restarts"],
                r["reason"],
                r["address"],
                (r["health"] or {}).get("ok"),
            )
            for r in report["instances"]
        ),
    )
