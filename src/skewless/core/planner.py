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
appear later as their own events, each with its reason (docs/decisions/planner-success.md).

**Failure**: a failed target instance, failed smoke checks, a failing canary analysis, or
no progress within ``progress_deadline`` ends the rollout ``failed`` with the reason;
the same plan gives new sessions back to the old version. Sessions already pinned to the
failed version keep it until idle, like any retirement; an operator rollback
(``rollback_of``) retires it at once and routers re-pin its sessions.

**Paused**: no actions. **Terminal** (succeeded, failed, aborted, rolled back): settle:
the *keeper* (the target on success, else the old version) gets all new sessions, others
are retired by the session rules and their instances drained and stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from skewless.core.analysis import judge
from skewless.core.capacity import (
    EPS,
    floor_of,
    is_leaving,
    is_serving,
    occupies_slot,
)
from skewless.core.model import TERMINAL_ROLLOUT_STATES, InstanceState, RolloutState, VersionState
from skewless.core.placement import IdAllocator, free_slots, place
from skewless.core.plan import (
    Action,
    AddToTable,
    DrainInstance,
    FinishRollout,
    FleetSnapshot,
    InstanceView,
    Plan,
    RetireVersion,
    RunSmoke,
    SetWeights,
    StartInstance,
    StopInstance,
    VersionView,
)
from skewless.core.retirement import session_retirement


def plan(snapshot: FleetSnapshot) -> Plan:
    """The next safe actions for ``snapshot`` (see the module docstring)."""
    fleet = _Fleet(snapshot)
    if snapshot.state in TERMINAL_ROLLOUT_STATES:
        keeper = fleet.target if snapshot.state is RolloutState.SUCCEEDED else fleet.keeper()
        return fleet.settle(keeper, finish=None)
    if snapshot.state is RolloutState.PAUSED:
        return Plan(waiting_for="paused", floors=dict(fleet.floors))
    failure = fleet.failure()
    if failure is not None:
        return fleet.settle(
            fleet.keeper(), finish=FinishRollout(state=RolloutState.FAILED, reason=failure)
        )
    if fleet.is_complete():
        return fleet.settle(
            fleet.target,
            finish=FinishRollout(state=RolloutState.SUCCEEDED, reason=fleet.success_reason()),
        )
    progress = fleet.progress()
    elapsed = snapshot.now - snapshot.last_progress_at
    moving = any(not isinstance(a, RunSmoke) for a in progress.actions)
    if not moving and elapsed >= snapshot.rollout.progress_deadline:
        why = progress.waiting_for or "no action possible"
        reason = (
            f"no progress for {elapsed:.0f} s "
            f"(progress deadline {snapshot.rollout.progress_deadline:g} s): {why}"
        )
        return fleet.settle(
            fleet.keeper(), finish=FinishRollout(state=RolloutState.FAILED, reason=reason)
        )
    return progress


WEIGHT_TOLERANCE = 5e-5


def _rounded(weights: dict[str, float]) -> dict[str, float]:
    """Weights to 4 decimals, still summing to 1 (the largest absorbs the rounding)."""
    out = {v: round(w, 4) for v, w in weights.items()}
    if out:
        largest = max(out, key=lambda v: (out[v], v))
        out[largest] = round(out[largest] + 1.0 - sum(out.values()), 4)
    return out


def _some(ids: list[str], shown: int = 3) -> str:
    """A few ids for a status line, the rest elided."""
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Budget:
    """What drains may still take out in this plan: per-version floors and max_unavailable."""

    def __init__(self, fleet: _Fleet) -> None:
        self.fleet = fleet
        self.serving = dict(fleet.serving)
        self.available = fleet.available
        self.min_available = max(0, fleet.spec.instances - fleet.spec.max_unavailable)

    def blocker(self, instance: InstanceView, floor: int) -> str | None:
        """Why ``instance`` may not be drained now (None: it may)."""
        fleet = self.fleet
        version = fleet.versions.get(instance.version)
        if version is None or instance.version not in fleet.floors:
            return None
        if not is_serving(instance):
            return None
        have = self.serving.get(instance.version, 0)
        if have - 1 < floor:
            if version.load > EPS:
                return (
                    f"{version.version} still carries {version.load:g} req/s and needs "
                    f"{floor} of its {_plural(have, 'instance')}"
                )
            if instance.version == fleet.target:
                return f"{version.version} keeps {floor} of its {_plural(have, 'instance')}"
            if version.weight > EPS:
                return (
                    f"{version.version} takes new sessions and needs {floor} of its "
                    f"{_plural(have, 'instance')}"
                )
            return (
                f"{version.version} still serves pinned sessions and needs {floor} of its "
                f"{_plural(have, 'instance')}"
            )
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


class _Fleet:
    """Indexes of one snapshot and the rules that read them."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snap = snapshot
        self.spec = snapshot.rollout
        self.now = snapshot.now
        self.target = self.spec.to_version
        self.versions: dict[str, VersionView] = {v.version: v for v in snapshot.versions}
        self.by_version: dict[str, list[InstanceView]] = {}
        for instance in sorted(snapshot.instances, key=lambda i: i.id):
            self.by_version.setdefault(instance.version, []).append(instance)
        # The target counts as active even if an earlier rollout retired it (a rollback
        # to a retired version brings it back).
        revive = snapshot.state not in TERMINAL_ROLLOUT_STATES
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

    # ---- reading the fleet ---------------------------------------------------------

    def weight(self, version: str) -> float:
        view = self.versions.get(version)
        return view.weight if view is not None else 0.0

    def target_instances(self) -> list[InstanceView]:
        """Target instances meant to run (not on their way out)."""
        return [
            i
            for i in self.by_version.get(self.target, ())
            if i.desired == "running" and i.table != "draining"
        ]

    def keeper(self) -> str:
        """Who takes all new sessions when the rollout did not succeed: the old version."""
        old = [v for v in self.active if v != self.target]
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
            if self.serving[best] > 0 or self.serving.get(self.target, 0) == 0:
                return best
        return self.target

    def failure(self) -> str | None:
        """Why the rollout must fail now (None: it need not)."""
        for instance in self.target_instances():
            if instance.state is InstanceState.FAILED:
                detail = f": {instance.reason}" if instance.reason else ""
                return f"{instance.id} failed on {instance.host}{detail}"
            if instance.smoke == "failed":
                detail = f": {instance.reason}" if instance.reason else ""
                return f"smoke checks failed on {instance.id}{detail}"
        analysis = self.spec.analysis
        target = self.versions.get(self.target)
        if analysis is None or target is None or target.stats is None or target.weight <= EPS:
            return None
        baseline = self._baseline()
        base_view = self.versions.get(baseline) if baseline is not None else None
        verdict = judge(
            canary=self.target,
            canary_stats=target.stats,
            baseline=baseline,
            baseline_stats=base_view.stats if base_view is not None else None,
            spec=analysis,
        )
        if verdict.kind == "fail":
            return f"canary analysis failed: {verdict.reason}"
        return None

    def _baseline(self) -> str | None:
        old = [v for v in self.active if v != self.target]
        if not old:
            return None
        return max(old, key=lambda v: (self.weight(v), self.serving[v], v))

    def is_complete(self) -> bool:
        if self.target not in self.versions:
            return False
        if self.weight(self.target) < 1.0 - EPS:
            return False
        if any(self.weight(v) > EPS for v in self.active if v != self.target):
            return False
        mine = self.target_instances()
        live = len(mine) == self.spec.instances and all(
            is_serving(i) and i.running_version == self.target for i in mine
        )
        if not live or not self.spec.success_after_retirement:
            return live
        # Stricter mode: every other version retired and its processes gone.
        others_active = any(v != self.target for v in self.active)
        leftovers = any(
            occupies_slot(i) and (i.version != self.target or i.desired != "running")
            for i in self.snap.instances
        )
        return not others_active and not leftovers

    def success_reason(self) -> str:
        others = [v for v in self.active if v != self.target]
        reason = f"{self.target} live on {_plural(self.spec.instances, 'instance')}"
        if others:
            reason += "; " + ", ".join(others) + " retire when their sessions end"
        return reason

    # ---- the rollout moving forward ------------------------------------------------

    def progress(self) -> Plan:
        actions: list[Action] = []
        waits: list[str] = []
        if self.target not in self.versions:
            waits.append(f"the snapshot has no release for {self.target}")
            return Plan(waiting_for="; ".join(waits), floors=dict(self.floors))
        budget = _Budget(self)
        self._lifecycle(actions, waits)
        self._grow(actions, waits, budget)
        self._weights(actions, waits)
        self._wind_down(actions, waits, budget, keeper=None)
        return self._plan(actions, waits, settled=False)

    def _lifecycle(self, actions: list[Action], waits: list[str]) -> None:
        """Start → ready (right version) → smoke → table, for each target instance."""
        starting: list[str] = []
        smoking: list[str] = []
        for instance in self.target_instances():
            rv = instance.running_version
            if rv is not None and rv != self.target:
                waits.append(
                    f"host {instance.host} runs {rv} for {instance.id}, asked for {self.target}"
                )
                continue
            if instance.table == "ready":
                if instance.state is not InstanceState.READY:
                    waits.append(f"{instance.id} is {instance.state.value}")
                continue
            if instance.state is not InstanceState.READY:
                starting.append(instance.id)
            elif rv is None:
                waits.append(f"host {instance.host} has not reported the version of {instance.id}")
            elif instance.smoke == "pending":
                actions.append(RunSmoke(instance_id=instance.id))
                smoking.append(instance.id)
            elif instance.smoke == "passed":
                actions.append(AddToTable(instance_id=instance.id))
        if smoking:
            waits.append(f"smoke checks on {_some(smoking)}")
        if starting:
            waits.append(
                f"{_plural(len(starting), 'instance')} of {self.target} starting: {_some(starting)}"
            )

    def _grow(self, actions: list[Action], waits: list[str], budget: _Budget) -> None:
        """Start missing target instances; under ``rolling``, free slots by draining."""
        spec = self.spec
        mine = self.target_instances()
        missing = spec.instances - len(mine)
        if missing <= 0:
            return
        free = free_slots(self.snap)
        new_per_host: dict[str, int] = {}
        for instance in mine:
            new_per_host[instance.host] = new_per_host.get(instance.host, 0) + 1
        leaving = [i for i in self.snap.instances if is_leaving(i)]
        wanted = missing
        if spec.strategy == "rolling":
            pending = sum(1 for i in mine if not is_serving(i))
            leaving_active = sum(1 for i in leaving if i.version in self.floors)
            moves_left = max(0, spec.batch - pending - leaving_active)
            # max_surge counts above the larger of the old fleet and the new one: a
            # rollout that shrinks the app does not need extra room to start.
            occupying = sum(1 for i in self.snap.instances if occupies_slot(i))
            old_fleet = sum(
                1
                for i in self.snap.instances
                if occupies_slot(i) and not is_leaving(i) and i.version != self.target
            )
            baseline = max(spec.instances, old_fleet)
            surge_room = max(0, baseline + spec.max_surge - occupying)
            wanted = min(missing, moves_left, surge_room)
            if moves_left == 0:
                waits.append(f"batch of {spec.batch} in flight")
        prefer = (
            {i.host for v in self.active if v != self.target for i in self.by_version.get(v, ())}
            if spec.strategy == "side-by-side"
            else set()
        )
        hosts = place(wanted, free, new_per_host=new_per_host, prefer=prefer)
        ids = IdAllocator(
            spec.app,
            self.target,
            [i.id for i in self.snap.instances] + list(self.snap.past_instance_ids),
        )
        for host in hosts:
            actions.append(
                StartInstance(instance_id=ids.next_id(host), host=host, version=self.target)
            )
        short = missing - len(hosts)
        if short <= 0:
            return
        if spec.strategy == "surge":
            if len(hosts) < wanted:
                waits.append(f"surge needs {_plural(short, 'more free slot')} for {self.target}")
            return
        moves_left = max(
            0,
            spec.batch
            - sum(1 for i in mine if not is_serving(i))
            - sum(1 for i in leaving if i.version in self.floors)
            - len(hosts),
        )
        to_free = min(short - len(leaving), moves_left)
        if to_free <= 0:
            return
        candidates = self._old_candidates()
        if spec.strategy == "side-by-side":
            candidates = self._keeping_hosts_in_pool(candidates)
        drained = self._drain_some(
            to_free, candidates, actions, budget, waits, floor_for=self._floor
        )
        if drained < to_free and not hosts and not leaving:
            waits.append(
                f"{spec.strategy} needs a free slot for {self.target}: "
                "allow more slots (or --max-surge) or wait for old sessions to end"
            )

    def _keeping_hosts_in_pool(self, candidates: list[InstanceView]) -> list[InstanceView]:
        """Side-by-side frees a slot only on a host that keeps serving meanwhile."""
        per_host: dict[str, int] = {}
        for instance in self.snap.instances:
            if is_serving(instance) and instance.version in self.floors:
                per_host[instance.host] = per_host.get(instance.host, 0) + 1
        kept: list[InstanceView] = []
        for instance in candidates:
            if not is_serving(instance):
                kept.append(instance)
            elif per_host.get(instance.host, 0) > 1:
                per_host[instance.host] -= 1
                kept.append(instance)
        return kept

    def _floor(self, version: str) -> int:
        if version == self.target:
            return max(self.floors.get(version, 0), self.spec.instances)
        return self.floors.get(version, 0)

    def _old_candidates(self) -> list[InstanceView]:
        """Table-ready instances of active non-target versions, best to drain first."""
        found = [
            i
            for v in self.active
            if v != self.target
            for i in self.by_version.get(v, ())
            if i.table == "ready"
        ]
        return sorted(
            found,
            key=lambda i: (
                is_serving(i),
                self.weight(i.version) > EPS,
                self.floors.get(i.version, 0) - self.serving[i.version],
                i.id,
            ),
        )

    def _drain_some(
        self,
        count: int,
        candidates: Iterable[InstanceView],
        actions: list[Action],
        budget: _Budget,
        waits: list[str],
        *,
        floor_for: Callable[[str], int],
    ) -> int:
        done = 0
        first_block: str | None = None
        proposed = {a.instance_id for a in actions if isinstance(a, DrainInstance)}
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
            actions.append(DrainInstance(instance_id=instance.id))
            proposed.add(instance.id)
            done += 1
        if done < count and first_block is not None:
            waits.append(first_block)
        return done

    def _weights(self, actions: list[Action], waits: list[str]) -> None:
        spec = self.spec
        target = self.target
        current = self.weight(target)
        ready = self.serving.get(target, 0)
        desired = current
        if ready == 0:
            desired = 0.0
        else:
            steps = (1.0,) if spec.rollback_of is not None else spec.steps
            reached = sum(1 for s in steps if s <= current + EPS)
            if reached < len(steps):
                goal = steps[reached]
                at_step = (reached == 0 and current <= EPS) or (
                    reached > 0 and abs(current - steps[reached - 1]) <= EPS
                )
                gate = None
                if at_step and reached > 0 and current > EPS:
                    since = self.snap.step_since
                    if since is not None and self.now - since < spec.step_interval:
                        gate = (
                            f"canary step {current:.0%} holds until "
                            f"{spec.step_interval - (self.now - since):.0f} s more have passed"
                        )
                if gate is not None:
                    waits.append(gate)
                else:
                    share = self._capacity_share(ready)
                    if spec.strategy == "surge" and ready < spec.instances:
                        share = 0.0
                        waits.append(
                            f"surge switches when all {spec.instances} instances of {target} "
                            f"are ready ({ready} are)"
                        )
                    elif share < goal - EPS:
                        view = self.versions[target]
                        waits.append(
                            f"{target} gets {max(share, current):.0%} of new sessions: its "
                            f"{_plural(ready, 'ready instance')} carry "
                            f"{ready * view.capacity:g} req/s, {goal:.0%} of "
                            f"{self.total_load:g} req/s * {spec.headroom:g} needs more"
                        )
                    desired = max(current, min(goal, share))
        old = [v for v in self.active if v != target and self.serving[v] > 0]
        if not old and ready > 0:
            desired = 1.0
        if not old and ready == 0:
            waits.append("no version of the app has a ready instance")
            return
        weights = {v: 0.0 for v in self.active}
        weights[target] = desired
        rest = 1.0 - desired
        if rest > EPS:
            total_old = sum(self.weight(v) for v in old)
            if total_old > EPS:
                for v in old:
                    weights[v] = rest * self.weight(v) / total_old
            else:
                best = max(old, key=lambda v: (self.serving[v], v))
                weights[best] = rest
        self._set_weights(weights, actions)

    def _capacity_share(self, ready: int) -> float:
        if self.total_load <= EPS:
            return 1.0
        view = self.versions[self.target]
        share = ready * view.capacity / (self.total_load * self.spec.headroom)
        return min(1.0, math.floor(share * 100 + EPS) / 100)

    def _set_weights(self, weights: dict[str, float], actions: list[Action]) -> None:
        weights = _rounded(weights)
        # A store that keeps fewer digits must not make the same change look new forever.
        changed = any(abs(self.weight(v) - w) > WEIGHT_TOLERANCE for v, w in weights.items())
        if not changed:
            return
        target_weight = weights.get(self.target, 0.0)
        steps = self.spec.steps
        step = max(0, sum(1 for s in steps if s <= target_weight + EPS) - 1)
        actions.append(
            SetWeights(
                weights=tuple((v, weights[v]) for v in sorted(weights)),
                step=step,
                basis=self.snap.table_generation,
            )
        )

    # ---- winding down old versions -------------------------------------------------

    def _wind_down(
        self,
        actions: list[Action],
        waits: list[str],
        budget: _Budget,
        *,
        keeper: str | None,
    ) -> None:
        """Retire, drain and stop what the fleet no longer needs.

        ``keeper`` None: the rollout is progressing toward the target (its lifecycle is
        handled elsewhere); else the rollout is over and only ``keeper`` stays.
        """
        stay = self.target if keeper is None else keeper
        # Instances never added to the table and no longer wanted: stop at once.
        for instance in self.snap.instances:
            if instance.desired != "running" or instance.table != "absent":
                continue
            if keeper is None and instance.version == self.target:
                continue
            if not occupies_slot(instance):
                continue
            actions.append(StopInstance(instance_id=instance.id))
        # Instances the agent gave up on hold a slot and serve nobody: drain and stop them
        # (a failed target instance fails the rollout instead, see ``failure``).
        for instance in self.snap.instances:
            if keeper is None and instance.version == self.target:
                continue
            failed = instance.state is InstanceState.FAILED and instance.desired == "running"
            if failed and instance.table == "ready":
                actions.append(DrainInstance(instance_id=instance.id))
        # Retirement of versions nobody sends new sessions to.
        taking = [v for v in self.active if self.weight(v) > EPS]
        for name in self.active:
            if name == stay or self.weight(name) > EPS:
                continue
            if self.versions[name].state is VersionState.RETIRED:
                continue  # a retired target, revived only while its rollout runs
            self._maybe_retire(name, taking, actions, waits)
        # Retired (or unknown) versions: every instance goes.
        for name, instances in self.by_version.items():
            if name in self.floors:
                continue
            for instance in instances:
                if instance.table == "ready":
                    actions.append(DrainInstance(instance_id=instance.id))
        # Surplus above the floor: weight-0 versions as their load falls, extra targets.
        surplus: list[InstanceView] = []
        for name in self.active:
            if self.serving[name] <= self._floor(name):
                continue
            mine = [i for i in self.by_version.get(name, ()) if i.table == "ready"]
            if name == stay and name == self.target:
                surplus.extend(i for i in mine if is_serving(i))
            elif name != stay and self.weight(name) <= EPS:
                surplus.extend(mine)
        if surplus:
            ordered = sorted(surplus, key=lambda i: (is_serving(i), i.id))
            quiet: list[str] = []
            self._drain_some(len(ordered), ordered, actions, budget, quiet, floor_for=self._floor)
        # Draining instances stop once routers no longer send them work.
        draining_waits: list[str] = []
        stopping = {a.instance_id for a in actions if isinstance(a, StopInstance)}
        for instance in self.snap.instances:
            if instance.desired == "stopped" or instance.id in stopping:
                continue
            if instance.table != "draining" and instance.desired != "draining":
                continue
            why = self._drain_pending(instance)
            if why is None:
                actions.append(StopInstance(instance_id=instance.id))
            else:
                draining_waits.append(why)
        if draining_waits:
            more = f" and {len(draining_waits) - 2} more" if len(draining_waits) > 2 else ""
            waits.append("draining: " + "; ".join(draining_waits[:2]) + more)
        gone = [i.id for i in self.snap.instances if i.desired == "stopped" and occupies_slot(i)]
        if gone:
            waits.append(f"agents stopping {_some(gone, 2)}")

    def _maybe_retire(
        self, name: str, taking: list[str], actions: list[Action], waits: list[str]
    ) -> None:
        view = self.versions[name]
        carry = sum(self.serving[v] * self.versions[v].capacity for v in taking)
        ready = sum(self.serving[v] for v in taking)
        need = (sum(self.versions[v].load for v in taking) + view.load) * self.spec.headroom
        # Moving no load breaks no floor, even where the others are already short.
        fits = ready > 0 and (view.load <= EPS or carry + EPS >= need)
        if self.spec.rollback_of == name:
            if fits:
                actions.append(RetireVersion(version=name, reason="rolled_back"))
            else:
                waits.append(
                    f"{name} is rolled back: its sessions move when "
                    f"{', '.join(taking) or 'the old version'} can carry {need:g} req/s "
                    f"(now {carry:g})"
                )
            return
        check = session_retirement(view, self.spec, self.now)
        if check.reason is None:
            waits.append(check.why)
            return
        if not fits:
            waits.append(
                f"{name} may retire ({check.why}) once "
                f"{', '.join(taking) or 'another version'} can carry {need:g} req/s "
                f"(now {carry:g})"
            )
            return
        actions.append(RetireVersion(version=name, reason=check.reason))

    def _drain_pending(self, instance: InstanceView) -> str | None:
        """What a draining instance still waits for before it may stop (None: nothing)."""
        if instance.table == "absent":
            return None
        generation = instance.drain_generation
        if generation is None:
            generation = self.snap.table_generation
        routers = self.snap.routers_generation
        if routers is not None and routers < generation:
            return (
                f"{instance.id} waits for routers to serve generation {generation} (at {routers})"
            )
        if instance.inflight <= 0:
            return None
        timeout = self.spec.drain_timeout
        if (
            timeout is not None
            and instance.drained_at is not None
            and self.now - instance.drained_at >= timeout
        ):
            return None
        return f"{instance.id} has {instance.inflight} in flight"

    # ---- the rollout is over -------------------------------------------------------

    def settle(self, keeper: str, *, finish: FinishRollout | None) -> Plan:
        actions: list[Action] = []
        waits: list[str] = []
        if keeper in self.versions and self.serving.get(keeper, 0) > 0:
            weights = {v: 0.0 for v in self.active}
            weights[keeper] = 1.0
            self._set_weights(weights, actions)
        else:
            waits.append(f"{keeper} has no ready instance to take new sessions")
        budget = _Budget(self)
        self._wind_down(actions, waits, budget, keeper=keeper)
        if finish is not None:
            actions.append(finish)
            return self._plan(actions, waits, settled=False)
        others_gone = all(v == keeper for v in self.active) and all(
            i.version == keeper and i.desired == "running"
            for i in self.snap.instances
            if occupies_slot(i)
        )
        return self._plan(actions, waits, settled=not actions and others_gone)

    def _plan(self, actions: list[Action], waits: list[str], *, settled: bool) -> Plan:
        seen: set[str] = set()
        unique: list[Action] = []
        for action in actions:
            if action.key not in seen:
                seen.add(action.key)
                unique.append(action)
        reasons = list(dict.fromkeys(waits))
        return Plan(
            actions=tuple(unique),
            waiting_for="; ".join(reasons) if reasons else None,
            floors=dict(self.floors),
            settled=settled,
        )
