"""Build the planner's ``FleetSnapshot`` for one rollout from the store and a clock reading.

What the controller asked (instance rows, version rows, the rollout row) is joined with
what the fleet reports: agent reports give each instance's state, address and the
version it really runs; router reports give in-flight counts per instance and, per
version, load, sessions and the last pinned request. Reports older than ``STALE``
seconds are ignored (a router that stopped reporting no longer holds back drains, a
host whose agent is silent is not ``alive``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skewless.controller.store import RolloutRow, Store
from skewless.controller.tables import agent_instances, release_drain_timeout
from skewless.core.analysis import AnalysisSpec, VersionStats, p99_from_histogram
from skewless.core.model import InstanceState, RolloutState, VersionState
from skewless.core.plan import FleetSnapshot, HostView, InstanceView, RolloutSpec, VersionView

STALE = 15.0
"""Seconds after which an agent or router report no longer counts."""


@dataclass(kw_only=True)
class VersionTraffic:
    load: float = 0.0
    sessions: int = 0
    last_pinned_at: float | None = None


@dataclass(kw_only=True)
class RouterFacts:
    generation: int | None = None
    inflight: dict[str, int] = field(default_factory=dict)
    traffic: dict[tuple[str, str], VersionTraffic] = field(default_factory=dict)


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def router_facts(store: Store, now: float, stale: float = STALE) -> RouterFacts:
    """What the routers report, aggregated over reporters.

    A reporter is one router process, or one worker of a ``--workers N`` router
    (``ID-wK``): each counts what it saw itself. So load (rps), requests and in-flight
    counts add up; ``last_pinned_at`` is the latest any reporter saw; the generation the
    routers serve is the lowest one. ``sessions`` is the sum too, an *overestimate* when
    one session's requests reach several workers (or routers): each counts it. It only
    keeps a version longer (retirement waits for 0 sessions), never retires it early.

    Reporters silent for more than ``stale`` seconds (a worker replaced, a router gone or
    upgraded under another id) stop counting, so they cannot hold ``generation`` back
    or keep in-flight work on a draining instance forever, except for ``last_pinned_at``:
    a pinned request one of them saw still counts toward the idle timeout (invariant 3).
    """
    facts = RouterFacts()
    gens = []
    for _, report, received_at in store.router_reports():
        if now - received_at > stale:
            _pinned_only(facts, report)
            continue
        gen = report.get("generation")
        if isinstance(gen, int) and not isinstance(gen, bool):
            gens.append(gen)
        for inst in report.get("instances") or ():
            if isinstance(inst, dict) and isinstance(inst.get("id"), str):
                facts.inflight[inst["id"]] = facts.inflight.get(inst["id"], 0) + int(
                    _num(inst.get("inflight"))
                )
        for app in report.get("apps") or ():
            if not isinstance(app, dict):
                continue
            for v in app.get("versions") or ():
                if not isinstance(v, dict):
                    continue
                t = facts.traffic.setdefault(
                    (str(app.get("app")), str(v.get("version"))), VersionTraffic()
                )
                t.load += _num(v.get("rps"))
                t.sessions += int(_num(v.get("sessions")))
                pinned = v.get("last_pinned_at")
                if isinstance(pinned, int | float) and not isinstance(pinned, bool):
                    t.last_pinned_at = max(t.last_pinned_at or 0.0, float(pinned))
    facts.generation = min(gens) if gens else None
    return facts


def _pinned_only(facts: RouterFacts, report: dict[str, Any]) -> None:
    """Take only ``last_pinned_at`` from a stale report (see ``router_facts``)."""
    for app in report.get("apps") or ():
        if not isinstance(app, dict):
            continue
        for v in app.get("versions") or ():
            pinned = v.get("last_pinned_at") if isinstance(v, dict) else None
            if isinstance(pinned, int | float) and not isinstance(pinned, bool):
                key = (str(app.get("app")), str(v.get("version")))
                t = facts.traffic.setdefault(key, VersionTraffic())
                t.last_pinned_at = max(t.last_pinned_at or 0.0, float(pinned))


def _state(raw: Any, desired: str) -> InstanceState:
    try:
        return InstanceState(raw)
    except ValueError:
        return InstanceState.STOPPED if desired == "stopped" else InstanceState.STARTING


def counters(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Cumulative counters of one router report: (app, version) -> requests, errors, latency."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for app in report.get("apps") or ():
        if not isinstance(app, dict):
            continue
        for v in app.get("versions") or ():
            if not isinstance(v, dict):
                continue
            latency = v.get("latency_ms")
            if not isinstance(latency, dict):
                latency = {}
            out[(str(app.get("app")), str(v.get("version")))] = {
                "requests": int(_num(v.get("requests"))),
                "errors": int(_num(v.get("errors_5xx")) + _num(v.get("connect_failures"))),
                "latency": {k: int(_num(n)) for k, n in latency.items()},
            }
    return out


def step_baseline(store: Store, app: str) -> dict[str, Any]:
    """What ``RolloutRow.step_baseline`` stores: router -> version -> counters, now."""
    base: dict[str, Any] = {}
    for router_id, report, _ in store.router_reports():
        per = counters(report)
        base[router_id] = {v: c for (a, v), c in per.items() if a == app}
    return base


def version_stats(
    store: Store, app: str, baseline: dict[str, Any], now: float
) -> dict[str, VersionStats]:
    """Router counters since the current step began, summed over routers that report.

    A router whose counters went down restarted: its counters count from zero.
    """
    sums: dict[str, dict[str, Any]] = {}
    for router_id, report, received_at in store.router_reports():
        if now - received_at > STALE:
            continue
        for (a, version), cur in counters(report).items():
            if a != app:
                continue
            base = (baseline.get(router_id) or {}).get(version)
            if not base or cur["requests"] < base.get("requests", 0):
                base = {"requests": 0, "errors": 0, "latency": {}}
            acc = sums.setdefault(version, {"requests": 0, "errors": 0, "latency": {}})
            acc["requests"] += cur["requests"] - base["requests"]
            acc["errors"] += max(0, cur["errors"] - base["errors"])
            for k, n in cur["latency"].items():
                acc["latency"][k] = acc["latency"].get(k, 0) + max(0, n - base["latency"].get(k, 0))
    return {
        v: VersionStats(
            requests=acc["requests"],
            errors=acc["errors"],
            p99_ms=p99_from_histogram(acc["latency"]) if acc["latency"] else None,
        )
        for v, acc in sums.items()
    }


def rollout_spec(row: RolloutRow, drain_timeout: float | None = None) -> RolloutSpec:
    o = row.options
    session = o.get("session") or {}
    analysis = o.get("analysis")
    return RolloutSpec(
        step_interval=float(o.get("step_interval", 0.0)),
        analysis=AnalysisSpec(**analysis) if isinstance(analysis, dict) else None,
        drain_timeout=drain_timeout,
        succeed_when="retired" if o.get("succeed_when") == "retired" else "live",
        app=row.app,
        to_version=row.to_version,
        strategy=row.strategy,  # type: ignore[arg-type]
        instances=int(o.get("instances", 1)),
        batch=int(o.get("batch", 1)),
        max_unavailable=int(o.get("max_unavailable", 1)),
        max_surge=int(o.get("max_surge", 0)),
        headroom=float(o.get("headroom", 1.3)),
        steps=tuple(float(s) for s in o.get("steps", [1.0])),
        progress_deadline=float(o.get("progress_deadline", 600.0)),
        idle_timeout=float(session.get("idle_timeout", 1800.0)),
        max_lifetime=float(session.get("max_lifetime", 43200.0)),
        rollback_of=row.rollback_of,
    )


def build_snapshot(store: Store, rollout: RolloutRow, now: float) -> FleetSnapshot:
    app = rollout.app
    reported = agent_instances(store)
    routers = router_facts(store, now)

    hosts = tuple(
        HostView(
            id=h.id,
            slots=h.slots,
            alive=h.report_at is not None and now - h.report_at <= STALE,
        )
        for h in store.list_hosts()
        if h.report is not None
    )

    instances = []
    past: set[str] = set()
    other_slots: dict[str, int] = {}
    for inst in store.list_instances():
        entry = reported.get(inst.id, ("", {}))[1]
        state = _state(entry.get("state"), inst.desired)
        gone = inst.desired == "stopped" and state in (InstanceState.STOPPED, InstanceState.FAILED)
        if inst.app != app:
            if not gone:
                other_slots[inst.host] = other_slots.get(inst.host, 0) + 1
            continue
        if gone:
            past.add(inst.id)
            continue
        running = entry.get("version")
        reason = entry.get("reason") if isinstance(entry.get("reason"), str) else None
        if inst.smoke == "failed":
            reason = f"smoke checks failed: {inst.smoke_detail}"
        instances.append(
            InstanceView(
                id=inst.id,
                host=inst.host,
                version=inst.version,
                desired=inst.desired,  # type: ignore[arg-type]
                state=state,
                running_version=running if isinstance(running, str) else None,
                table=inst.table_state,  # type: ignore[arg-type]
                smoke=inst.smoke,  # type: ignore[arg-type]
                drain_generation=inst.drain_generation,
                inflight=routers.inflight.get(inst.id, 0),
                restarts=int(_num(entry.get("restarts"))),
                reason=reason,
                drained_at=inst.drained_at,
            )
        )

    with_instances = {i.version for i in instances}
    stats = version_stats(store, app, rollout.step_baseline, now)
    versions = []
    for v in store.list_versions(app):
        if (
            v.state == "retired"
            and v.version not in with_instances
            and v.version != rollout.to_version
        ):
            continue
        release = store.get_release(app, v.version)
        capacity = _num((release.spec if release else {}).get("capacity"), 100.0) or 100.0
        traffic = routers.traffic.get((app, v.version), VersionTraffic())
        versions.append(
            VersionView(
                version=v.version,
                state=VersionState(v.state),
                weight=v.weight,
                capacity=capacity,
                load=traffic.load,
                sessions=traffic.sessions,
                last_pinned_at=traffic.last_pinned_at,
                live_since=v.live_since,
                weight_zero_since=v.weight_zero_since,
                stats=stats.get(v.version, VersionStats()),
            )
        )
    # The planner has one drain_timeout for all instances: the longest of the releases
    # that have instances, so that no instance is stopped with work in flight before the
    # drain_deadline its route-table entry promises (``tables.build_table``).
    drain_timeout = max(
        (
            release_drain_timeout(r.spec)
            for version in {i.version for i in instances} | {rollout.to_version}
            if (r := store.get_release(app, version)) is not None
        ),
        default=None,
    )

    return FleetSnapshot(
        now=now,
        rollout=rollout_spec(rollout, drain_timeout),
        state=RolloutState(rollout.state),
        started_at=rollout.started_at,
        last_progress_at=rollout.last_progress_at,
        step=rollout.step,
        hosts=hosts,
        versions=tuple(versions),
        instances=tuple(instances),
        other_apps_slots=other_slots,
        table_generation=store.table_generation(),
        routers_generation=routers.generation,
        step_since=rollout.step_since,
        past_instance_ids=frozenset(past),
    )
