"""The rollout planner: ``plan(snapshot) -> Plan``, the next safe actions of a rollout.

Theory of operation
-------------------
A rollout is *capacity following sessions*. Each call looks at the whole fleet as it is
now (level-triggered: nothing is remembered between calls) and answers "which actions
move the fleet toward the target version without breaking a floor?". The engine takes
the actions, records them, and calls again when something changed.

Per version the planner knows its live load (router reports) and what one instance
carries (the release's ``capacity``), hence its **floor**: the ready instances it needs,
``ceil(load * headroom / capacity)``, at least one while it takes new sessions or may
still have pinned sessions (``capacity.floor_of``). Every call runs these rules, each
only proposing actions whose effect the snapshot does not show yet:

1. **New instances** of the target version: ``StartInstance`` on a free slot (next free
   id), then, once the agent reports it ready *running the asked version*, ``RunSmoke``,
   then, once the smoke checks passed, ``AddToTable``. A target instance that ``failed``
   or failed its smoke checks fails the rollout (see *Failure*).
2. **Slots** depend on the strategy, the only place strategies differ besides weights:
   ``side-by-side`` and ``surge`` use free slots only (no host leaves the pool);
   ``rolling`` may also use up to ``max_surge`` extra slots and frees slots by draining
   old instances that the old version's load no longer needs. Rolling moves ``batch``
   instances at a time (an old instance leaving or a new one coming up is one move).
3. **Weights** (share of new sessions): the target's share grows with its ready capacity
   (``ready * capacity >= share * total load * headroom``) and one canary step at a time;
   the next step waits ``step_interval`` at the current one and a canary analysis that
   does not fail. ``surge`` switches only when its full set is ready. A version with no
   ready instance never gets new sessions. A rollback ignores the canary steps.
4. **Drains** of old instances never take a version below its floor, nor the app's ready
   instances below ``instances - max_unavailable``; versions with weight 0 are drained
   down to their floor as their load falls (cost), surplus instances of the target too.
5. **Retirement** of a version at weight 0 follows ``retirement.session_retirement``
   (sessions idle, max lifetime, never used), or is immediate (``rolled_back``) for the
   version a rollback undoes, once the versions taking new sessions can carry its load.
   Retired versions' instances are drained and stopped.
6. **Stops**: a draining instance stops once every router serves the generation that
   drained it and nothing is in flight on it (or ``drain_timeout`` passed).

**Success** is declared when the target is fully live: its ``instances`` instances ready
in the table running the right version, weight 1.0. Old versions may still be serving
their pinned sessions then; the engine keeps calling the planner after success, which
keeps retiring them by the same rules (``Plan.settled`` says when nothing is left).
``skewless deploy --wait`` thus returns when the new version is live, and retirements
appear as their own events, each with its reason. ``succeed_when="retired"`` waits for
them instead (docs/decisions/planner-success.md).

**Failure**: a failed target instance, failed smoke checks, a failing canary analysis, or
no progress within ``progress_deadline`` ends the rollout ``failed`` with the reason
(except while the new version takes every new session and only old sessions, bounded by
``max_lifetime``, hold the slots of its last instances);
the same plan starts giving new sessions back to the old version. Sessions already
pinned to the failed version keep it until idle, like any retirement; an operator
rollback (``rollback_of``) retires it at once and routers re-pin its sessions.

**Paused**: no actions. **Terminal** (succeeded, failed, aborted, rolled back): settle:
the *keeper* (the target on success, else the old version) keeps or gets all new
sessions, others are retired by the session rules and their instances drained and
stopped. Going back to an old keeper is planned as a rollout to it, back to the
rollout's ``instances`` (or more, for the whole load), so that the fleet the operator
asked for comes back and the keeper takes new sessions only as fast as its capacity grows.

Where the rules live: ``new_instances`` (rules 1-2), ``weights`` (3), ``wind_down``
(4-6), ``fleet_view`` (indexes, floors and the drain budget of the capacity guard),
``retirement`` (the session rules), ``placement`` (slots and ids), ``analysis`` (canary).
"""

from __future__ import annotations

from dataclasses import replace

from skewless.core.analysis import judge
from skewless.core.capacity import EPS, instances_needed, is_serving, occupies_slot
from skewless.core.fleet_view import Draft, DrainBudget, FleetView
from skewless.core.model import TERMINAL_ROLLOUT_STATES, InstanceState, RolloutState
from skewless.core.new_instances import advance_new_instances, start_missing
from skewless.core.plan import FinishRollout, FleetSnapshot, Plan, RunSmoke
from skewless.core.retirement import session_retirement
from skewless.core.weights import set_weights, shift_weights
from skewless.core.wind_down import wind_down
from skewless.core.wording import plural


def plan(snapshot: FleetSnapshot) -> Plan:
    """The next safe actions for ``snapshot`` (see the module docstring)."""
    fleet = FleetView(snapshot)
    if snapshot.state in TERMINAL_ROLLOUT_STATES:
        keeper = fleet.target if snapshot.state is RolloutState.SUCCEEDED else fleet.keeper()
        return settle(fleet, keeper)
    if snapshot.state is RolloutState.PAUSED:
        return Plan(waiting_for="paused", floors=dict(fleet.floors))
    failure = why_failed(fleet)
    if failure is not None:
        return _fail(snapshot, failure)
    if is_complete(fleet):
        done = FinishRollout(state=RolloutState.SUCCEEDED, reason=_success_reason(fleet))
        return settle(fleet, fleet.target, finish=done)
    result = progress(fleet)
    elapsed = snapshot.now - snapshot.last_progress_at
    # Smoke checks are proposed again while they run: they alone are no progress.
    moving = any(not isinstance(a, RunSmoke) for a in result.actions)
    deadline = snapshot.rollout.progress_deadline
    if not moving and elapsed >= deadline and not old_sessions_hold(fleet):
        why = result.waiting_for or "no action possible"
        reason = f"no progress for {elapsed:.0f} s (progress deadline {deadline:g} s): {why}"
        return _fail(snapshot, reason)
    return result


def old_sessions_hold(fleet: FleetView) -> bool:
    """The rollout waits only for old versions' sessions to end (their slots hold the
    last new instances): a wait that ``max_lifetime`` bounds, so no deadline applies."""
    target = fleet.target
    if fleet.weight(target) < 1.0 - EPS:
        return False
    if not all(is_serving(i) and i.running_version == target for i in fleet.target_instances()):
        return False
    return any(
        fleet.weight(v) <= EPS
        and session_retirement(fleet.versions[v], fleet.spec, fleet.now).reason is None
        for v in fleet.old_versions()
    )


def progress(fleet: FleetView) -> Plan:
    """The actions that move a running rollout toward the target."""
    draft = Draft()
    if fleet.target not in fleet.versions:
        draft.waits.append(f"the snapshot has no release for {fleet.target}")
        return draft.to_plan(fleet)
    budget = DrainBudget(fleet)
    advance_new_instances(fleet, draft)
    start_missing(fleet, draft, budget)
    shift_weights(fleet, draft)
    wind_down(fleet, draft, budget, keeper=None)
    return draft.to_plan(fleet)


def settle(fleet: FleetView, keeper: str, *, finish: FinishRollout | None = None) -> Plan:
    """After a rollout (or in the plan that ends it): ``keeper`` takes every new session,
    the other versions wind down. ``settled`` once nothing else is left.

    When the rollout did not succeed, the way back to the keeper is itself a rollout
    (``_back_to``): the keeper takes new sessions as fast as its capacity allows and
    grows to carry the whole load, so that going back breaks no floor either.
    """
    draft = Draft()
    if keeper != fleet.target and keeper in fleet.versions:
        back = FleetView(_back_to(fleet, keeper), min_available=fleet.min_available)
        budget = DrainBudget(back)
        advance_new_instances(back, draft)
        start_missing(back, draft, budget)
        shift_weights(back, draft)
        wind_down(back, draft, budget, keeper=None)
    else:
        if keeper in fleet.floors and fleet.serving.get(keeper, 0) > 0:
            weights = {v: 0.0 for v in fleet.active}
            weights[keeper] = 1.0
            set_weights(fleet, draft, weights)
        else:
            draft.waits.append(f"{keeper} has no ready instance to take new sessions")
        wind_down(fleet, draft, DrainBudget(fleet), keeper=keeper)
    if finish is not None:
        draft.actions.append(finish)
        return draft.to_plan(fleet)
    others_gone = all(v == keeper for v in fleet.active) and all(
        i.version == keeper and i.desired == "running"
        for i in fleet.snap.instances
        if occupies_slot(i)
    )
    # A keeper instance still on its way into the table (starting, smoke checks) is not
    # settled: its next steps (smoke, add) come from later plans.
    joining = any(
        i.version == keeper
        and i.desired == "running"
        and i.table == "absent"
        and i.state is not InstanceState.FAILED
        for i in fleet.snap.instances
    )
    return draft.to_plan(fleet, settled=not draft.actions and others_gone and not joining)


def _back_to(fleet: FleetView, keeper: str) -> FleetSnapshot:
    """The snapshot of a rollout to ``keeper`` with the rollout's instance count (more if
    the load needs it), with no canary steps and no analysis (and, from the caller, the availability rule of the rollout
    it replaces)."""
    spec = fleet.spec
    view = fleet.versions[keeper]
    has = sum(
        1
        for i in fleet.by_version.get(keeper, ())
        if i.desired == "running" and i.table != "draining"
    )
    # Back to the capacity the operator asked for: the rollout's instance count (a deploy
    # defaults it to the previous one's, i.e. what the keeper ran before), more if the
    # load needs it, never fewer than the keeper has (docs/decisions/integrate-restore.md).
    needed = instances_needed(fleet.total_load, view.capacity, spec.headroom)
    size = max(1, has, spec.instances, needed)
    back = replace(
        spec,
        to_version=keeper,
        instances=size,
        strategy="side-by-side" if spec.strategy == "surge" else spec.strategy,
        steps=(1.0,),
        step_interval=0.0,
        analysis=None,
        succeed_when="live",
    )
    return replace(fleet.snap, rollout=back, state=RolloutState.PROGRESSING)


def why_failed(fleet: FleetView) -> str | None:
    """Why a running rollout must fail now (None: it need not)."""
    for instance in fleet.target_instances():
        detail = f": {instance.reason}" if instance.reason else ""
        if instance.state is InstanceState.FAILED:
            return f"{instance.id} failed on {instance.host}{detail}"
        if instance.smoke == "failed":
            return f"smoke checks failed on {instance.id}{detail}"
    analysis = fleet.spec.analysis
    target = fleet.versions.get(fleet.target)
    if analysis is None or target is None or target.stats is None or target.weight <= EPS:
        return None
    baseline = fleet.baseline()
    base_view = fleet.versions.get(baseline) if baseline is not None else None
    verdict = judge(
        canary=fleet.target,
        canary_stats=target.stats,
        baseline=baseline,
        baseline_stats=base_view.stats if base_view is not None else None,
        spec=analysis,
    )
    return f"canary analysis failed: {verdict.reason}" if verdict.kind == "fail" else None


def is_complete(fleet: FleetView) -> bool:
    """The target serves every new session on all its instances (and, with
    ``succeed_when="retired"``, every other version is retired and gone)."""
    target = fleet.target
    if target not in fleet.versions or fleet.weight(target) < 1.0 - EPS:
        return False
    if any(fleet.weight(v) > EPS for v in fleet.old_versions()):
        return False
    mine = fleet.target_instances()
    live = len(mine) == fleet.spec.instances and all(
        is_serving(i) and i.running_version == target for i in mine
    )
    if not live or fleet.spec.succeed_when == "live":
        return live
    leftovers = any(
        occupies_slot(i) and (i.version != target or i.desired != "running")
        for i in fleet.snap.instances
    )
    return not fleet.old_versions() and not leftovers


def _success_reason(fleet: FleetView) -> str:
    reason = f"{fleet.target} live on {plural(fleet.spec.instances, 'instance')}"
    others = fleet.old_versions()
    if others:
        return reason + "; " + ", ".join(others) + " retire when their sessions end"
    return reason + "; every other version retired"


def _fail(snapshot: FleetSnapshot, reason: str) -> Plan:
    """End the rollout ``failed``: the plan already settles as the ended rollout will."""
    ended = FleetView(snapshot, ending=True)
    return settle(
        ended, ended.keeper(), finish=FinishRollout(state=RolloutState.FAILED, reason=reason)
    )
