"""Journal recovery after a crash between "recorded" and "taken", and no action twice.

The engine is driven directly (no server): a crash is simulated by recording a journal
row without taking its action, exactly what kill -9 between the two transactions leaves.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from skewless.controller import ops
from skewless.controller.actions import action_json
from skewless.controller.engine import Engine
from skewless.controller.store_sqlite import SqliteStore
from skewless.controller.watch import Watch
from skewless.core.plan import AddToTable, FleetSnapshot, Plan, StartInstance


def _setup(tmp_path: Path) -> tuple[SqliteStore, int]:
    store = SqliteStore(tmp_path / "j.db")
    body = {"version": "v1", "command": ["app", "{port}"], "instances": 1}
    rid = ops.deploy(store, "shop", body, 10.0)["rollout"]["id"]
    store.save_host_report("h1", {"host_id": "h1", "slots": 2, "instances": []}, 10.0)
    return store, rid


def test_recorded_but_not_taken_is_abandoned_and_left_to_the_planner(tmp_path: Path) -> None:
    store, rid = _setup(tmp_path)
    start = StartInstance(instance_id="h1/shop/v1/0", host="h1", version="v1")
    store.journal_record(rid, start.key, action_json(start), 11.0)  # then: kill -9
    engine = Engine(store, Watch(), clock=lambda: 12.0, planner=lambda s: Plan())
    assert engine.recover() == [(start.key, "abandoned")]
    assert store.get_instance("h1/shop/v1/0") is None  # nothing was re-sent blindly
    # the planner asks again (the snapshot shows no such instance): now it is taken once
    engine._planner = lambda s: Plan(actions=(start,))
    asyncio.run(engine.step(rid))
    assert store.get_instance("h1/shop/v1/0").desired == "running"
    assert store.journal_get(rid, start.key).status == "done"
    events = [e for e in store.list_events(app="shop") if e.kind == "recovered"]
    assert "was not taken" in events[0].message
    store.close()


def test_recorded_with_visible_effect_is_marked_done(tmp_path: Path) -> None:
    store, rid = _setup(tmp_path)
    start = StartInstance(instance_id="h1/shop/v1/0", host="h1", version="v1")
    engine = Engine(store, Watch(), clock=lambda: 12.0, planner=lambda s: Plan(actions=(start,)))
    asyncio.run(engine.step(rid))
    # as if the process died after taking the action but before marking it (a store that
    # does not make the two atomic would leave this): recovery must not take it again
    store._db.execute("UPDATE journal SET status = 'recorded', done_at = NULL")
    assert Engine(store, Watch(), clock=lambda: 13.0).recover() == [(start.key, "done")]
    store.close()


def test_a_done_action_is_never_taken_twice(tmp_path: Path) -> None:
    store, rid = _setup(tmp_path)
    start = StartInstance(instance_id="h1/shop/v1/0", host="h1", version="v1")
    add = AddToTable(instance_id="h1/shop/v1/0")
    seen: list[FleetSnapshot] = []

    def buggy(s: FleetSnapshot) -> Plan:
        seen.append(s)
        return Plan(actions=(start, add))

    engine = Engine(store, Watch(), clock=lambda: 12.0, planner=buggy)
    asyncio.run(engine.step(rid))
    gen = store.get_host("h1").desired_generation
    table_gen = store.table_generation()
    store.update_instance("h1/shop/v1/0", table_state="absent")  # someone undid it
    asyncio.run(engine.step(rid))
    assert store.get_host("h1").desired_generation == gen  # not started again
    assert store.table_generation() == table_gen
    assert store.get_instance("h1/shop/v1/0").table_state == "absent"  # not re-added
    taken = [e.data["key"] for e in store.list_events(app="shop") if e.kind == "action"]
    assert taken == [start.key, add.key]
    store.close()


def test_an_action_that_cannot_be_taken_changes_nothing_and_says_so(tmp_path: Path) -> None:
    from skewless.core.model import RolloutState
    from skewless.core.plan import FinishRollout

    store, rid = _setup(tmp_path)
    ops.abort(store, "shop", 11.0)
    bad = FinishRollout(state=RolloutState.SUCCEEDED, reason="nope")  # aborted is terminal
    engine = Engine(store, Watch(), clock=lambda: 12.0, planner=lambda s: Plan(actions=(bad,)))
    asyncio.run(engine.step(rid))
    asyncio.run(engine.step(rid))  # proposed again: reported once
    assert store.get_rollout(rid).state == "aborted"
    assert store.journal_get(rid, bad.key).status == "abandoned"
    (error,) = [e for e in store.list_events(app="shop") if e.kind == "error"]
    assert "illegal transition aborted -> succeeded" in error.message
    store.close()


def test_a_rollout_that_waits_past_its_deadline_fails_with_the_reason(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    body = {"version": "v1", "command": ["app", "{port}"], "progress_deadline": 60}
    rid = ops.deploy(store, "shop", body, 10.0)["rollout"]["id"]
    now = [10.0]
    engine = Engine(
        store, Watch(), clock=lambda: now[0], planner=lambda s: Plan(waiting_for="no live hosts")
    )
    asyncio.run(engine.step(rid))
    now[0] = 10.0 + 60 * 1.05  # within the grace the planner has to decide itself
    asyncio.run(engine.step(rid))
    assert store.get_rollout(rid).state == "progressing"
    now[0] = 10.0 + 60 * 1.2
    asyncio.run(engine.step(rid))
    rollout = store.get_rollout(rid)
    assert rollout.state == "failed"
    assert rollout.reason == "no progress within the progress deadline (60s): no live hosts"
    store.close()
