"""Winding down what the fleet no longer needs: retire, drain, stop.

Runs on every plan, while a rollout progresses (everything but the target winds down)
and after it ended (everything but the *keeper* does). In order:

1. instances never added to the table and no longer wanted stop at once; instances the
   agent gave up on (``failed``) are drained, then stopped;
2. versions at weight 0 retire by the session rules (``retirement``), or at once as
   ``rolled_back`` when this rollout undoes them, provided the versions taking new
   sessions can carry their remaining load;
3. retired versions' instances all drain;
4. versions at weight 0 drain down to their floor as their load falls, and target
   instances above ``instances`` drain (the capacity guard decides how many);
5. a draining instance stops once every live router serves the generation that drained
   it and nothing is in flight on it (or ``drain_timeout`` passed).
"""

from __future__ import annotations

from skewless.core.capacity import EPS, is_serving, occupies_slot
from skewless.core.fleet_view import Draft, DrainBudget, FleetView, drain_some
from skewless.core.model import InstanceState, VersionState
from skewless.core.plan import DrainInstance, InstanceView, RetireVersion, StopInstance
from skewless.core.retirement import session_retirement
from skewless.core.wording import rps, some


def wind_down(fleet: FleetView, draft: Draft, budget: DrainBudget, *, keeper: str | None) -> None:
    """``keeper`` None: the rollout progresses toward the target; else only it stays."""
    stay = fleet.target if keeper is None else keeper
    growing = fleet.target if keeper is None else None
    for instance in fleet.snap.instances:
        if instance.version == growing or not occupies_slot(instance):
            continue
        if instance.desired == "running" and instance.table == "absent":
            draft.actions.append(StopInstance(instance_id=instance.id))
        elif instance.state is InstanceState.FAILED and instance.table == "ready":
            # The agent gave up on it: it serves nobody and holds a slot.
            draft.actions.append(DrainInstance(instance_id=instance.id))
    taking = [v for v in fleet.active if fleet.weight(v) > EPS]
    for name in fleet.active:
        if name == stay or fleet.weight(name) > EPS:
            continue
        if fleet.versions[name].state is VersionState.RETIRED:
            continue  # a retired target, revived only while its rollout runs
        _maybe_retire(fleet, draft, name, taking)
    for name, instances in fleet.by_version.items():
        if name not in fleet.floors:  # retired or unknown: every instance goes
            draft.actions.extend(
                DrainInstance(instance_id=i.id) for i in instances if i.table == "ready"
            )
    _drain_surplus(fleet, draft, budget, stay)
    _stop_drained(fleet, draft)


def _maybe_retire(fleet: FleetView, draft: Draft, name: str, taking: list[str]) -> None:
    view = fleet.versions[name]
    carry = sum(fleet.serving[v] * fleet.versions[v].capacity for v in taking)
    ready = sum(fleet.serving[v] for v in taking)
    need = (sum(fleet.versions[v].load for v in taking) + view.load) * fleet.spec.headroom
    # Moving no load breaks no floor, even where the others are already short.
    fits = ready > 0 and (view.load <= EPS or carry + EPS >= need)
    others = ", ".join(taking) or "another version"
    if fleet.spec.rollback_of == name:
        if fits:
            draft.actions.append(RetireVersion(version=name, reason="rolled_back"))
        else:
            draft.waits.append(
                f"{name} is rolled back: its sessions move when {others} can carry "
                f"{rps(need)} req/s (now {rps(carry)})"
            )
        return
    check = session_retirement(view, fleet.spec, fleet.now)
    if check.reason is None:
        draft.waits.append(check.why)
    elif not fits:
        draft.waits.append(
            f"{name} may retire ({check.why}) once {others} can carry {rps(need)} req/s "
            f"(now {rps(carry)})"
        )
    else:
        draft.actions.append(RetireVersion(version=name, reason=check.reason))


def _drain_surplus(fleet: FleetView, draft: Draft, budget: DrainBudget, stay: str) -> None:
    surplus: list[InstanceView] = []
    for name in fleet.active:
        if fleet.serving[name] <= fleet.floor_for(name):
            continue
        mine = [i for i in fleet.by_version.get(name, ()) if i.table == "ready"]
        if name == stay and name == fleet.target:
            surplus.extend(i for i in mine if is_serving(i))
        elif name != stay and fleet.weight(name) <= EPS:
            surplus.extend(mine)
    if surplus:
        ordered = sorted(surplus, key=lambda i: (is_serving(i), i.id))
        drain_some(len(ordered), ordered, draft, budget, floor_for=fleet.floor_for, explain=False)


def _stop_drained(fleet: FleetView, draft: Draft) -> None:
    waiting: list[str] = []
    stopping = {a.instance_id for a in draft.actions if isinstance(a, StopInstance)}
    for instance in fleet.snap.instances:
        if instance.desired == "stopped" or instance.id in stopping:
            continue
        if instance.table != "draining" and instance.desired != "draining":
            continue
        why = _drain_pending(fleet, instance)
        if why is None:
            draft.actions.append(StopInstance(instance_id=instance.id))
        else:
            waiting.append(why)
    if waiting:
        more = f" and {len(waiting) - 2} more" if len(waiting) > 2 else ""
        draft.waits.append("draining: " + "; ".join(waiting[:2]) + more)
    gone = [i.id for i in fleet.snap.instances if i.desired == "stopped" and occupies_slot(i)]
    if gone:
        draft.waits.append(f"agents stopping {some(gone, 2)}")


def _drain_pending(fleet: FleetView, instance: InstanceView) -> str | None:
    """What a draining instance still waits for before it may stop (None: nothing)."""
    if instance.table == "absent":
        return None
    generation = instance.drain_generation
    if generation is None:
        generation = fleet.snap.table_generation
    routers = fleet.snap.routers_generation
    if routers is not None and routers < generation:
        return f"{instance.id} waits for routers to serve generation {generation} (at {routers})"
    if instance.inflight <= 0:
        return None
    timeout = fleet.spec.drain_timeout
    drained_at = instance.drained_at
    if timeout is not None and drained_at is not None and fleet.now - drained_at >= timeout:
        return None
    return f"{instance.id} has {instance.inflight} in flight"
