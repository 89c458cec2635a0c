"""The rollout engine: asks the planner what to do next and does it, journal first.

Theory of operation
-------------------
For each active rollout the engine builds a ``FleetSnapshot`` from the store, calls the
pure ``plan(snapshot)`` and takes the actions it returns, one at a time:

1. **record**: a journal row ``(rollout id, Action.key)`` with status ``recorded`` is
   committed. Nothing has happened yet.
2. **take**: in one transaction the effect is written (desired instance, table state,
   weights, rollout state), the route table / desired state is re-published (bumping
   its generation when it changed), the journal row becomes ``done`` and an event is
   appended. Routers and agents only ever see the effect through those published
   bodies, so they cannot see an effect whose journal row is not ``done``.

``RunSmoke`` is the one action with an effect outside the store (HTTP requests to the
instance): it runs between (1) and (2), and its result is written in (2).

A controller killed with kill -9 at any point therefore leaves each action in one of
three states: not recorded (never taken), ``done`` (taken, and the planner sees its
effect in the next snapshot) or ``recorded`` (not taken, or for a smoke check, maybe sent
but without a recorded result). ``recover()`` runs on start before the first plan and
re-checks every ``recorded`` row against the store: an effect that is visible is marked
``done``; otherwise the row is ``abandoned`` and the planner decides afresh from the
snapshot, never a blind re-send. A key that is ``done`` is never taken again, even if a
buggy plan proposes it twice.

The loop wakes on reports, admin calls and a short tick; time comes from an injected
clock, so tests can move it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from skewless.controller import tables
from skewless.controller.actions import action_json, describe, gist, shift_weight
from skewless.controller.smoke import run_smoke
from skewless.controller.snapshot import build_snapshot, step_baseline
from skewless.controller.store import (
    InstanceRow,
    JournalRow,
    JournalStatus,
    RolloutRow,
    Store,
    VersionRow,
)
from skewless.controller.tables import agent_instances
from skewless.controller.watch import Watch
from skewless.core.model import ROLLOUT_TRANSITIONS, RolloutState, advance
from skewless.core.plan import (
    Action,
    AddToTable,
    DrainInstance,
    FinishRollout,
    FleetSnapshot,
    Plan,
    RetireVersion,
    RunSmoke,
    SetWeights,
    StartInstance,
    StopInstance,
)

log = logging.getLogger("skewless.controller")

Planner = Callable[[FleetSnapshot], Plan]
Smoker = Callable[[str | None, dict[str, Any]], Awaitable[tuple[bool, str]]]

DEADLINE_GRACE = 1.1
"""The engine fails a rollout itself if the planner lets the progress deadline pass by
this factor: a safety net so that no rollout stays ``progressing`` forever."""


def default_planner() -> Planner:
    from skewless.core.planner import plan

    return plan


class Engine:
    def __init__(
        self,
        store: Store,
        watch: Watch,
        *,
        clock: Callable[[], float] = time.time,
        planner: Planner | None = None,
        smoke: Smoker = run_smoke,
        tick: float = 0.5,
    ) -> None:
        self.store = store
        self.watch = watch
        self.clock = clock
        self._planner = planner
        self._smoke = smoke
        self.tick = tick
        self._wake: asyncio.Event | None = None
        self._failed: set[tuple[int, str]] = set()
        self.steps = 0

    def __repr__(self) -> str:
        return f"Engine(steps={self.steps}, active={len(self.store.active_rollouts())})"

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            self._planner = default_planner()
        return self._planner

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = asyncio.Event()
        self.recover()
        while True:
            self._wake.clear()
            try:
                await self.step_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)

    # ---- recovery -------------------------------------------------------------------

    def recover(self) -> list[tuple[str, str]]:
        """Settle journal rows left ``recorded`` by a crash; returns (key, outcome) pairs."""
        now = self.clock()
        outcomes: list[tuple[str, str]] = []
        for row in self.store.journal_pending():
            visible = self._effect_visible(row)
            status: JournalStatus = "done" if visible else "abandoned"
            rollout = self.store.get_rollout(row.rollout_id)
            with self.store.transaction():
                self.store.journal_finish(row.rollout_id, row.key, status, now)
                self.store.add_event(
                    app=rollout.app if rollout else None,
                    kind="recovered",
                    message=f"after restart: {row.key} was {'taken' if visible else 'not taken'}; "
                    + ("marked done" if visible else "left to the planner"),
                    now=now,
                    data={"key": row.key, "rollout_id": row.rollout_id, "outcome": status},
                )
            outcomes.append((row.key, status))
        return outcomes

    def _effect_visible(self, row: JournalRow) -> bool:
        a = row.action
        kind = a.get("kind")
        inst = self.store.get_instance(a["instance_id"]) if "instance_id" in a else None
        rollout = self.store.get_rollout(row.rollout_id)
        match kind:
            case "start":
                return inst is not None and inst.desired != "stopped"
            case "smoke":
                return inst is not None and inst.smoke != "pending"
            case "add":
                return inst is not None and inst.table_state != "absent"
            case "drain":
                return inst is not None and inst.table_state == "draining"
            case "stop":
                return inst is not None and inst.desired == "stopped"
            case "weights":
                return (
                    rollout is not None
                    and rollout.step >= int(a.get("step", 0))
                    and all(
                        (v := self.store.get_version(rollout.app, ver)) is not None
                        and v.weight == w
                        for ver, w in a.get("weights", [])
                    )
                )
            case "retire":
                v = self.store.get_version(rollout.app, a["version"]) if rollout else None
                return v is not None and v.state == "retired"
            case "finish":
                return rollout is not None and rollout.state == a.get("state")
        return False

    # ---- planning -------------------------------------------------------------------

    async def step_all(self) -> None:
        for rollout in self.store.unsettled_rollouts():
            await self.step(rollout.id)

    async def step(self, rollout_id: int) -> Plan | None:
        """Plan once for a rollout and take the actions; None when there is nothing to plan.

        Terminal rollouts are planned too until the planner says ``settled``: after
        success the old version still retires when its sessions end, and after a failure
        or an abort the failed version does.
        """
        self.steps += 1
        rollout = self.store.get_rollout(rollout_id)
        if rollout is None:
            return None
        now = self.clock()
        if rollout.state == RolloutState.PENDING:
            with self.store.transaction():
                self.store.update_rollout(rollout.id, state="progressing", last_progress_at=now)
                self.store.add_event(
                    app=rollout.app,
                    kind="rollout",
                    message=f"rollout {rollout.id} to {rollout.to_version} progressing "
                    f"({rollout.strategy})",
                    now=now,
                    data={"rollout_id": rollout.id, "state": "progressing"},
                )
            self.watch.notify()
            rollout = self.store.get_rollout(rollout_id)
            assert rollout is not None
        if rollout.settled:
            return None
        snapshot = build_snapshot(self.store, rollout, now)
        try:
            plan = self.planner(snapshot)
        except Exception as exc:
            log.exception("planner failed")
            self._note_waiting(rollout, f"planner error: {type(exc).__name__}: {exc}", now)
            return None
        if plan.waiting_for != rollout.waiting_for:
            self._note_waiting(
                rollout,
                plan.waiting_for,
                now,
                event=gist(plan.waiting_for) != gist(rollout.waiting_for),
            )
        actions = () if rollout.state == RolloutState.PAUSED else plan.actions
        for action in actions:
            current = self.store.get_rollout(rollout_id)
            if current is None or current.state != rollout.state:
                break  # paused, aborted or rolled back while we were busy
            await self.take(current, action)
            if isinstance(action, FinishRollout):
                break
        else:
            if plan.settled and not plan.actions:
                with self.store.transaction():
                    self.store.update_rollout(rollout_id, settled=True, waiting_for=None)
                    self.store.add_event(
                        app=rollout.app,
                        kind="settled",
                        message=f"rollout {rollout.id} to {rollout.to_version} settled: "
                        "nothing left to retire",
                        now=now,
                        data={"rollout_id": rollout.id},
                    )
                self.watch.notify()
            self._check_deadline(rollout_id, plan)
        return plan

    def _note_waiting(
        self, rollout: RolloutRow, waiting_for: str | None, now: float, *, event: bool = True
    ) -> None:
        with self.store.transaction():
            self.store.update_rollout(rollout.id, waiting_for=waiting_for)
            if waiting_for and event:
                self.store.add_event(
                    app=rollout.app,
                    kind="waiting",
                    message=waiting_for,
                    now=now,
                    data={"rollout_id": rollout.id},
                )
        self.watch.notify()

    def _check_deadline(self, rollout_id: int, plan: Plan) -> None:
        rollout = self.store.get_rollout(rollout_id)
        if rollout is None or rollout.state != RolloutState.PROGRESSING or plan.actions:
            return
        deadline = float(rollout.options.get("progress_deadline", 600.0))
        now = self.clock()
        if now - rollout.last_progress_at <= deadline * DEADLINE_GRACE:
            return
        why = plan.waiting_for or "no action possible"
        self.finish(
            rollout,
            RolloutState.FAILED,
            f"no progress within the progress deadline ({deadline:g}s): {why}",
        )

    # ---- taking actions -------------------------------------------------------------

    async def take(self, rollout: RolloutRow, action: Action) -> bool:
        """Journal then apply one action; False when it was already taken (no-op)."""
        key = action.key
        row = self.store.journal_get(rollout.id, key)
        if row is not None and row.status != "abandoned":
            log.warning("planner proposed %s again (journal: %s); not taking it", key, row.status)
            return False
        now = self.clock()
        self.store.journal_record(rollout.id, key, action_json(action), now)
        detail: str | None = None
        ok = True
        if isinstance(action, RunSmoke):
            inst = self.store.get_instance(action.instance_id)
            release = self.store.get_release(rollout.app, inst.version) if inst else None
            address = (
                agent_instances(self.store).get(action.instance_id, ("", {}))[1].get("address")
            )
            try:
                ok, detail = await self._smoke(address, release.spec if release else {})
            except Exception as exc:  # a smoke check must never kill the engine
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            now = self.clock()
        try:
            self._take(rollout, action, now, ok, detail)
        except Exception as exc:  # the effect rolled back: the action was not taken
            first = (rollout.id, key) not in self._failed
            self._failed.add((rollout.id, key))
            if first:
                log.exception("could not take %s", key)
            with self.store.transaction():
                self.store.journal_finish(rollout.id, key, "abandoned", now)
                if first:  # say it once, not at every tick
                    self.store.add_event(
                        app=rollout.app,
                        kind="error",
                        message=f"could not {describe(action)}: {type(exc).__name__}: {exc}",
                        now=now,
                        data={"rollout_id": rollout.id, "key": key},
                    )
            return False
        self.watch.notify()
        return True

    def _take(
        self, rollout: RolloutRow, action: Action, now: float, ok: bool, detail: str | None
    ) -> None:
        key = action.key
        with self.store.transaction():
            self._apply(rollout, action, now, ok, detail)
            self.store.journal_finish(rollout.id, key, "done", now)
            self.store.update_rollout(rollout.id, last_progress_at=now)
            message = describe(action)
            if detail:
                message += f": {'passed' if ok else 'FAILED'} ({detail})"
            self.store.add_event(
                app=rollout.app,
                kind="action",
                message=message,
                now=now,
                data={"rollout_id": rollout.id, "key": key, "action": action_json(action)},
            )

    def _apply(
        self, rollout: RolloutRow, action: Action, now: float, ok: bool, detail: str | None
    ) -> None:
        s = self.store
        app = rollout.app
        match action:
            case StartInstance():
                inst = s.get_instance(action.instance_id)
                if inst is None:
                    inst = InstanceRow(
                        id=action.instance_id,
                        app=app,
                        version=action.version,
                        host=action.host,
                        desired="running",
                        table_state="absent",
                        smoke="pending",
                        smoke_detail=None,
                        drain_generation=None,
                        created_at=now,
                    )
                    s.put_instance(inst)
                else:
                    s.update_instance(
                        inst.id, desired="running", smoke="pending", table_state="absent"
                    )
                tables.publish_desired(s, action.host)
            case RunSmoke():
                s.update_instance(
                    action.instance_id, smoke="passed" if ok else "failed", smoke_detail=detail
                )
            case AddToTable():
                s.update_instance(action.instance_id, table_state="ready")
                tables.publish_table(s)
            case DrainInstance():
                s.update_instance(action.instance_id, table_state="draining", drained_at=now)
                gen = tables.publish_table(s)
                s.update_instance(action.instance_id, drain_generation=gen)
            case StopInstance():
                inst = s.get_instance(action.instance_id)
                s.update_instance(action.instance_id, desired="stopped", table_state="absent")
                tables.publish_table(s)
                if inst is not None:
                    tables.publish_desired(s, inst.host)
            case SetWeights():
                given = dict(action.weights)
                for v in s.list_versions(app):
                    weight = float(given.get(v.version, 0.0))
                    s.put_version(shift_weight(v, weight, now))
                s.update_rollout(
                    rollout.id,
                    step=action.step,
                    step_since=now,
                    step_baseline=json.dumps(step_baseline(s, app)),
                )
                tables.publish_table(s)
            case RetireVersion():
                old = s.get_version(app, action.version)
                if old is not None:
                    s.put_version(
                        VersionRow(
                            app=app,
                            version=old.version,
                            state="retired",
                            weight=0.0,
                            live_since=old.live_since,
                            weight_zero_since=old.weight_zero_since or now,
                        )
                    )
                tables.publish_table(s)
            case FinishRollout():
                self._finish_row(rollout, action.state, action.reason, now)

    def finish(self, rollout: RolloutRow, state: RolloutState, reason: str) -> None:
        now = self.clock()
        with self.store.transaction():
            self._finish_row(rollout, state, reason, now)
        self.watch.notify()

    def _finish_row(
        self, rollout: RolloutRow, state: RolloutState, reason: str, now: float
    ) -> None:
        current = self.store.get_rollout(rollout.id) or rollout
        target = advance(ROLLOUT_TRANSITIONS, RolloutState(current.state), state)
        self.store.update_rollout(
            rollout.id, state=target.value, reason=reason, finished_at=now, waiting_for=None
        )
        self.store.add_event(
            app=rollout.app,
            kind="rollout",
            message=f"rollout {rollout.id} to {rollout.to_version} {target.value}: {reason}",
            now=now,
            data={"rollout_id": rollout.id, "state": target.value, "reason": reason},
        )
