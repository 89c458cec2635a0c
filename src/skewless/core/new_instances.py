"""Bringing up the target version: where new instances start and how each one joins.

Lifecycle of one new instance: ``StartInstance`` → the agent reports it ``ready`` *and*
running the version asked → ``RunSmoke`` → smoke checks passed → ``AddToTable``. An
instance whose agent runs another version never gets further (that blocks the rollout
until its progress deadline); a failed one fails the rollout (``planner.failure``).

Slots are where strategies differ:

- ``surge`` starts on free slots only (and switches weights only with the full set);
- ``side-by-side`` starts on free slots, preferring hosts that run the old version;
  short of slots, it frees some like rolling, never the last serving one of a host;
- ``rolling`` starts on free slots while the app stays within
  ``max(instances, old fleet) + max_surge`` slots, and frees slots by draining old
  instances above their floor; at most ``batch`` moves are in flight (an old instance
  leaving, or a new one not yet in the table).
"""

from __future__ import annotations

from skewless.core.capacity import EPS, is_leaving, is_serving, occupies_slot
from skewless.core.fleet_view import Draft, DrainBudget, FleetView, drain_some
from skewless.core.model import InstanceState
from skewless.core.placement import IdAllocator, free_slots, place
from skewless.core.plan import AddToTable, InstanceView, RunSmoke, StartInstance
from skewless.core.wording import plural, some


def advance_new_instances(fleet: FleetView, draft: Draft) -> None:
    """Smoke-check and add target instances that are ready; say what the others wait for."""
    target = fleet.target
    starting: list[str] = []
    smoking: list[str] = []
    for instance in fleet.target_instances():
        rv = instance.running_version
        if rv is not None and rv != target:
            draft.waits.append(
                f"host {instance.host} runs {rv} for {instance.id}, asked for {target}"
            )
            continue
        if instance.table == "ready":
            if instance.state is not InstanceState.READY:
                draft.waits.append(f"{instance.id} is {instance.state.value}")
            continue
        if instance.state is not InstanceState.READY:
            starting.append(instance.id)
        elif rv is None:
            draft.waits.append(
                f"host {instance.host} has not reported the version of {instance.id}"
            )
        elif instance.smoke == "pending":
            draft.actions.append(RunSmoke(instance_id=instance.id))
            smoking.append(instance.id)
        elif instance.smoke == "passed":
            draft.actions.append(AddToTable(instance_id=instance.id))
    if smoking:
        draft.waits.append(f"smoke checks on {some(smoking)}")
    if starting:
        draft.waits.append(
            f"{plural(len(starting), 'instance')} of {target} starting: {some(starting)}"
        )


def start_missing(fleet: FleetView, draft: Draft, budget: DrainBudget) -> None:
    """Start missing target instances; where slots are short, free some (not surge)."""
    spec, snap, target = fleet.spec, fleet.snap, fleet.target
    mine = fleet.target_instances()
    missing = spec.instances - len(mine)
    if missing <= 0:
        return
    new_per_host: dict[str, int] = {}
    for instance in mine:
        new_per_host[instance.host] = new_per_host.get(instance.host, 0) + 1
    leaving = [i for i in snap.instances if is_leaving(i)]
    pending = sum(1 for i in mine if not is_serving(i))
    moves_left = max(0, spec.batch - pending - sum(1 for i in leaving if i.version in fleet.floors))
    wanted = missing
    if spec.strategy == "rolling":
        # max_surge counts above the larger of the old fleet and the new one: a rollout
        # that shrinks the app needs no extra room to begin.
        occupying = sum(1 for i in snap.instances if occupies_slot(i))
        old_fleet = sum(
            1
            for i in snap.instances
            if occupies_slot(i) and not is_leaving(i) and i.version != target
        )
        surge_room = max(0, max(spec.instances, old_fleet) + spec.max_surge - occupying)
        wanted = min(missing, moves_left, surge_room)
        if moves_left == 0:
            draft.waits.append(f"batch of {spec.batch} in flight")
    prefer = (
        {i.host for v in fleet.old_versions() for i in fleet.by_version.get(v, ())}
        if spec.strategy == "side-by-side"
        else set()
    )
    hosts = place(wanted, free_slots(snap), new_per_host=new_per_host, prefer=prefer)
    ids = IdAllocator(
        spec.app, target, [i.id for i in snap.instances] + list(snap.past_instance_ids)
    )
    for host in hosts:
        draft.actions.append(
            StartInstance(instance_id=ids.next_id(host), host=host, version=target)
        )
    short = missing - len(hosts)
    if short <= 0:
        return
    if spec.strategy == "surge":
        if len(hosts) < wanted:
            draft.waits.append(f"surge needs {plural(short, 'more free slot')} for {target}")
        return
    to_free = min(short - len(leaving), moves_left - len(hosts))
    if to_free <= 0:
        return
    candidates = _drain_order(fleet)
    if spec.strategy == "side-by-side":
        candidates = _keeping_hosts_in_pool(fleet, candidates)
    drained = drain_some(to_free, candidates, draft, budget, floor_for=fleet.floor_for)
    if drained < to_free and not hosts and not leaving:
        draft.waits.append(
            f"{spec.strategy} needs a free slot for {target}: "
            "allow more slots (or --max-surge) or wait for old sessions to end"
        )


def _drain_order(fleet: FleetView) -> list[InstanceView]:
    """Old instances in the table, cheapest to lose first: not serving, then versions
    that take no new sessions, then the version with the most capacity to spare."""
    found = [
        i for v in fleet.old_versions() for i in fleet.by_version.get(v, ()) if i.table == "ready"
    ]
    return sorted(
        found,
        key=lambda i: (
            is_serving(i),
            fleet.weight(i.version) > EPS,
            fleet.floors.get(i.version, 0) - fleet.serving[i.version],
            i.id,
        ),
    )


def _keeping_hosts_in_pool(fleet: FleetView, candidates: list[InstanceView]) -> list[InstanceView]:
    """Side-by-side frees a slot only on a host that keeps serving meanwhile."""
    per_host: dict[str, int] = {}
    for instance in fleet.snap.instances:
        if is_serving(instance) and instance.version in fleet.floors:
            per_host[instance.host] = per_host.get(instance.host, 0) + 1
    kept: list[InstanceView] = []
    for instance in candidates:
        if not is_serving(instance):
            kept.append(instance)
        elif per_host.get(instance.host, 0) > 1:
            per_host[instance.host] -= 1
            kept.append(instance)
    return kept
