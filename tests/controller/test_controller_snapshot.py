"""build_snapshot: what the planner sees, joined from the store and the reports."""

from __future__ import annotations

import json
from pathlib import Path

from skewless.controller import ops
from skewless.controller.snapshot import STALE, build_snapshot, step_baseline
from skewless.controller.store import InstanceRow
from skewless.controller.store_sqlite import SqliteStore
from skewless.core.model import InstanceState


def _inst(iid: str, version: str, desired: str = "running", table: str = "ready") -> InstanceRow:
    return InstanceRow(
        id=iid,
        app="shop",
        version=version,
        host=iid.split("/")[0],
        desired=desired,
        table_state=table,
        smoke="passed",
        smoke_detail=None,
        drain_generation=None,
        created_at=1.0,
    )


def _router(gen: int, rps: float, sessions: int, requests: int, errors: int, pinned: float) -> dict:
    return {
        "router_id": "r",
        "generation": gen,
        "time": 0.0,
        "apps": [
            {
                "app": "shop",
                "versions": [
                    {
                        "version": "v1",
                        "requests": requests,
                        "errors_5xx": errors,
                        "connect_failures": 0,
                        "rps": rps,
                        "sessions": sessions,
                        "last_pinned_at": pinned,
                        "latency_ms": {"le_5": requests, "le_inf": requests},
                    }
                ],
            }
        ],
        "instances": [{"id": "h1/shop/v1/0", "inflight": 2, "healthy": True}],
    }


def test_snapshot_joins_desired_reports_and_router_facts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    ops.deploy(store, "shop", {"version": "v1", "command": ["a", "{port}"], "capacity": 50}, 1.0)
    rollout = store.latest_rollout("shop")
    store.put_instance(_inst("h1/shop/v1/0", "v1"))
    store.put_instance(_inst("h2/shop/v1/0", "v1", desired="stopped", table="absent"))
    store.put_instance(_inst("h2/shop/v1/1", "v1", table="absent"))
    store.save_host_report(
        "h1",
        {
            "slots": 2,
            "instances": [
                {
                    "id": "h1/shop/v1/0",
                    "state": "ready",
                    "version": "v0",
                    "address": "a:1",
                    "restarts": 3,
                },
            ],
        },
        100.0,
    )
    store.save_host_report(
        "h2",
        {
            "slots": 1,
            "instances": [
                {"id": "h2/shop/v1/0", "state": "stopped", "version": "v1"},
                {"id": "h2/shop/v1/1", "state": "failed", "version": "v1", "reason": "exit 1"},
            ],
        },
        100.0 - STALE - 1,
    )
    store.save_router_report("r1", _router(7, 3.0, 4, 100, 1, 95.0), 100.0)
    store.save_router_report("r2", _router(5, 2.0, 1, 50, 0, 99.0), 100.0)
    store.save_router_report("old", _router(1, 9.0, 9, 9, 9, 9.0), 100.0 - STALE - 1)

    snap = build_snapshot(store, rollout, 100.0)
    assert {h.id: (h.slots, h.alive) for h in snap.hosts} == {"h1": (2, True), "h2": (1, False)}
    by_id = {i.id: i for i in snap.instances}
    assert set(by_id) == {"h1/shop/v1/0", "h2/shop/v1/1"}  # the stopped one is forgotten
    assert snap.past_instance_ids == frozenset({"h2/shop/v1/0"})
    a = by_id["h1/shop/v1/0"]
    assert (a.state, a.running_version, a.inflight, a.restarts) == (InstanceState.READY, "v0", 4, 3)
    assert by_id["h2/shop/v1/1"].reason == "exit 1"
    (v1,) = snap.versions
    assert (v1.load, v1.sessions, v1.last_pinned_at, v1.capacity) == (5.0, 5, 99.0, 50.0)
    assert snap.routers_generation == 5  # the stale router does not hold anyone back
    assert (v1.stats.requests, v1.stats.errors) == (150, 1)

    # counters since the step began: a baseline taken now makes the window empty
    base = step_baseline(store, "shop")
    store.update_rollout(rollout.id, step_baseline=json.dumps(base))
    store.save_router_report("r1", _router(7, 3.0, 4, 130, 4, 95.0), 101.0)
    snap = build_snapshot(store, store.latest_rollout("shop"), 101.0)
    (v1,) = snap.versions
    assert (v1.stats.requests, v1.stats.errors) == (30, 3)
    # a router that restarted (counters went down) counts from zero
    store.save_router_report("r2", _router(5, 2.0, 1, 7, 0, 99.0), 101.0)
    (v1,) = build_snapshot(store, store.latest_rollout("shop"), 101.0).versions
    assert v1.stats.requests == 37
    store.close()
