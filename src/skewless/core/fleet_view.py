"""One snapshot, indexed for the planner's rules, and the budget its drains spend.

``FleetView`` answers the questions every rule asks (which versions are active, how
many instances of each serve, what each version's floor is, who keeps the sessions when a
rollout does not succeed). ``Draft`` collects the actions and reasons of one plan.
``DrainBudget`` is the capacity guard (invariant 4): every drain of one plan is charged
to it, so that together they never take a version below its floor nor the app below
``instances - max_unavailable`` serving instances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from skewless.core.capacity import EPS, floor_of, is_serving
from skewless.core.model import TERMINAL_ROLLOUT_STATES, VersionState
from skewless.core.plan import Action, DrainInstance, FleetSnapshot, InstanceView, Plan, VersionView
from skewless.core.retirement import session_retirement
from skewless.core.wording import plural, rps


class FleetView:
    """Indexes of one ``FleetSnapshot`` (read-only; built once per ``plan`` call)."""

    def __init__(
        self,
        snapshot: FleetSnapshot,
        *,
        min_available: int | None = None,
        ending: bool = False,
    ) -> None:
        self.snap = snapshot
        self.spec = snapshot.rollout
        self.min_available = (
            max(0, self.spec.instances - self.spec.max_unavailable)
            if min_available is None
            else min_available
        )
        """Serving instances the app keeps at least (the max_unavailable rule)."""
        self.now = snapshot.now
        self.target = self.spec.to_version
        self.versions: dict[str, VersionView] = {v.version: v for v in snapshot.versions}
        self.by_version: dict[str, list[InstanceView]] = {}
        for instance in sorted(snapshot.instances, key=lambda i: i.id):
            self.by_version.setdefault(instance.version, []).append(instance)
        # The target counts as active even if an earlier rollout retired it (a rollback
        # to a retired version brings it back), but only while its rollout runs on.
        revive = snapshot.state not in TERMINAL_ROLLOUT_STATES and not ending
        self.active = [
            v
            for v in sorted(self.versions)
            if self.versions[v].state is not VersionState.RETIRED or (revive and v == self.target)
        ]
        self.serving: dict[str, int] = {
            v: sum(1 for i in self.by_version.get(v, ()) if is_serving(i)) for v in self.versions
        }
        self.available = sum(self.serving[v] for v in self.active)
        self.total_load = sum(self.versions[v].load for v in self.active)
        self.floors: dict[str, int] = {}
        for name in self.active:
            version = self.versions[name]
            keep_one = (
                version.weight > EPS
                or version.sessions > 0
                or session_retirement(version, self.spec, self.now).reason is None
            )
            self.floors[name] = floor_of(
                load=version.load,
                capacity=version.capacity,
                headroom=self.spec.headroom,
                keep_one=keep_one,
            )

    def weight(self, version: str) -> float:
        view = self.versions.get(version)
        return view.weight if view is not None else 0.0

    def floor_for(self, version: str) -> int:
        """Serving instances a drain must leave: the floor, and for the target its size."""
        if version == self.target:
            return max(self.floors.get(version, 0), self.spec.instances)
        return self.floors.get(version, 0)

    def old_versions(self) -> list[str]:
        return [v for v in self.active if v != self.target]

    def target_instances(self) -> list[InstanceView]:
        """Target instances meant to run (not on their way out)."""
        return [
            i
            for i in self.by_version.get(self.target, ())
            if i.desired == "running" and i.table != "draining"
        ]

    def keeper(self) -> str:
        """Who takes every new session when the rollout did not succeed: the old version
        with ready instances and the most weight (the target only if no other can)."""
        old = self.old_versions()
        if old:
            best = max(
                old,
                key=lambda v: (
                    self.serving[v] > 0,
                    self.weight(v),
                    self.serving[v],
                    self.versions[v].live_since or 0.0,
                    v,
                ),
            )
            target_can = self.target in self.floors and self.serving.get(self.target, 0) > 0
            if self.serving[best] > 0 or not target_can:
                return best
        return self.target

    def baseline(self) -> str | None:
        """The old version a canary is compared with."""
        old = self.old_versions()
        if not old:
            return None
        return max(old, key=lambda v: (self.weight(v), self.serving[v], v))


@dataclass
class Draft:
    """The actions and reasons of one plan while the rules add to it."""

    actions: list[Action] = field(default_factory=list)
    waits: list[str] = field(default_factory=list)

    def to_plan(self, fleet: FleetView, *, settled: bool = False) -> Plan:
        seen: set[str] = set()
        unique: list[Action] = []
        for action in self.actions:
            if action.key not in seen:
                seen.add(action.key)
                unique.append(action)
        reasons = list(dict.fromkeys(self.waits))
        return Plan(
            actions=tuple(unique),
            waiting_for="; ".join(reasons) if reasons else None,
            floors=dict(fleet.floors),
            settled=settled,
        )


class DrainBudget:
    """What drains may still take out in this plan: per-version floors, max_unavailable."""

    def __init__(self, fleet: FleetView) -> None:
        self.fleet = fleet
        self.serving = dict(fleet.serving)
        self.available = fleet.available
        self.min_available = fleet.min_available

    def blocker(self, instance: InstanceView, floor: int) -> str | None:
        """Why ``instance`` may not be drained now (None: it may)."""
        fleet = self.fleet
        version = fleet.versions.get(instance.version)
        if version is None or instance.version not in fleet.floors or not is_serving(instance):
            return None  # retired, unknown or not serving: draining it takes nothing away
        have = self.serving.get(instance.version, 0)
        if have - 1 < floor:
            needs = f"needs {floor} of its {plural(have, 'instance')}"
            if version.load > EPS:
                return f"{version.version} still carries {rps(version.load)} req/s and {needs}"
            if instance.version == fleet.target:
                return f"{version.version} keeps {floor} of its {plural(have, 'instance')}"
            if version.weight > EPS:
                return f"{version.version} takes new sessions and {needs}"
            return f"{version.version} still serves pinned sessions and {needs}"
        if self.available - 1 < self.min_available:
            return (
                f"max unavailable {fleet.spec.max_unavailable}: {self.available} instances "
                f"in service, at least {self.min_available} must stay"
            )
        return None

    def take(self, instance: InstanceView) -> None:
        if instance.version not in self.fleet.floors or not is_serving(instance):
            return
        self.serving[instance.version] = self.serving.get(instance.version, 0) - 1
        self.available -= 1


def drain_some(
    count: int,
    candidates: Iterable[InstanceView],
    draft: Draft,
    budget: DrainBudget,
    *,
    floor_for: Callable[[str], int],
    explain: bool = True,
) -> int:
    """Drain up to ``count`` of ``candidates`` (in order) that the budget allows.

    Returns how many; when short and ``explain``, the first floor that held one back
    becomes a reason in the draft.
    """
    done = 0
    first_block: str | None = None
    proposed = {a.instance_id for a in draft.actions if isinstance(a, DrainInstance)}
    for instance in candidates:
        if done >= count:
            break
        if instance.id in proposed:
            continue
        block = budget.blocker(instance, floor_for(instance.version))
        if block is not None:
            first_block = first_block or block
            continue
        budget.take(instance)
        draft.actions.append(DrainInstance(instance_id=instance.id))
        proposed.add(instance.id)
        done += 1
    if explain and done < count and first_block is not None:
        draft.waits.append(first_block)
    return done
