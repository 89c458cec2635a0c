"""Read models of the API: an app's status (the ``skewless status APP --json`` shape),
the app list, releases, hosts and rollouts as JSON."""

from __future__ import annotations

from typing import Any

from skewless.controller import tables
from skewless.controller.snapshot import STALE, router_facts
from skewless.controller.store import RolloutRow, Store
from skewless.controller.tables import agent_instances
from skewless.core.errors import ClientError
from skewless.core.model import TERMINAL_ROLLOUT_STATES, RolloutState


class ApiError(ClientError):
    """An error the API answers with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def current_version(store: Store, app: str) -> str | None:
    """The version taking most new sessions (None for a new app)."""
    live = [v for v in store.list_versions(app) if v.state != "retired" and v.weight > 0]
    return max(live, key=lambda v: v.weight).version if live else None


def need_app(store: Store, app: str) -> None:
    if store.get_app(app) is None:
        raise ApiError(404, f"unknown app {app!r}: deploy it first")


def rollout_json(r: RolloutRow | None) -> dict[str, Any] | None:
    if r is None:
        return None
    terminal = RolloutState(r.state) in TERMINAL_ROLLOUT_STATES
    return {
        "id": r.id,
        "state": r.state,
        "strategy": r.strategy,
        "from": r.from_version,
        "to": r.to_version,
        "reason": r.reason if terminal else (r.waiting_for or r.reason),
        "waiting_for": r.waiting_for,
        "step": r.step,
        "steps": r.options.get("steps", [1.0]),
        "instances": r.options.get("instances"),
        "started_at": r.started_at,
        "last_progress_at": r.last_progress_at,
        "finished_at": r.finished_at,
        "rollback_of": r.rollback_of,
        "options": r.options,
    }


def app_status(store: Store, app: str, now: float) -> dict[str, Any]:
    row = store.get_app(app)
    if row is None:
        raise ApiError(404, f"unknown app {app!r}: deploy it first")
    reported = agent_instances(store)
    traffic = router_facts(store, now).traffic
    by_version: dict[str, list[dict[str, Any]]] = {}
    for inst in store.list_instances(app=app):
        entry = reported.get(inst.id, ("", {}))[1]
        state = entry.get("state") or ("stopped" if inst.desired == "stopped" else "starting")
        if inst.desired == "stopped" and state == "stopped":
            continue
        by_version.setdefault(inst.version, []).append(
            {
                "id": inst.id,
                "host": inst.host,
                "state": state,
                "address": entry.get("address"),
                "desired": inst.desired,
                "table": inst.table_state,
                "smoke": inst.smoke,
                "running_version": entry.get("version"),
                "pid": entry.get("pid"),
                "restarts": entry.get("restarts", 0),
                "health": entry.get("health"),
            }
        )
    versions = []
    for v in store.list_versions(app):
        t = traffic.get((app, v.version))
        versions.append(
            {
                "version": v.version,
                "state": v.state,
                "weight": v.weight,
                "instances": by_version.get(v.version, []),
                "load": t.load if t else 0.0,
                "sessions": t.sessions if t else 0,
                "last_pinned_at": t.last_pinned_at if t else None,
                "live_since": v.live_since,
                "weight_zero_since": v.weight_zero_since,
            }
        )
    return {
        "app": app,
        "versions": versions,
        "rollout": rollout_json(store.latest_rollout(app)),
        "session": tables.session_json(app, row.session),
        "table_generation": store.table_generation(),
    }


def list_apps(store: Store) -> dict[str, Any]:
    out = []
    for a in store.list_apps():
        r = store.latest_rollout(a.name)
        out.append(
            {
                "app": a.name,
                "name": a.name,
                "version": current_version(store, a.name),
                "versions": [
                    {"version": v.version, "state": v.state, "weight": v.weight}
                    for v in store.list_versions(a.name)
                ],
                "rollout": rollout_json(r),
            }
        )
    return {"apps": out}


def list_releases(store: Store, app: str) -> dict[str, Any]:
    need_app(store, app)
    versions = {v.version: v for v in store.list_versions(app)}
    return {
        "app": app,
        "releases": [
            {
                "version": r.version,
                "created_at": r.created_at,
                "state": versions[r.version].state if r.version in versions else "retired",
                "weight": versions[r.version].weight if r.version in versions else 0.0,
                "spec": r.spec,
            }
            for r in store.list_releases(app)
        ],
    }


def list_hosts(store: Store, now: float) -> dict[str, Any]:
    out = []
    for h in store.list_hosts():
        report = h.report or {}
        running = [
            i
            for i in report.get("instances") or ()
            if isinstance(i, dict) and i.get("state") != "stopped"
        ]
        out.append(
            {
                "id": h.id,
                "host_id": h.id,
                "slots": h.slots,
                "alive": h.report_at is not None and now - h.report_at <= STALE,
                "last_report_at": h.report_at,
                "desired_generation": h.desired_generation,
                "applied_generation": report.get("generation"),
                "instances": len(running),
            }
        )
    return {"hosts": out}
