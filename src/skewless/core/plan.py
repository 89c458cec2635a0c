"""The contract between the rollout planner (``skewless.core.planner``) and the rollout
engine (``skewless.controller``): a snapshot goes in, actions come out.

Theory of operation
-------------------
The engine builds a ``FleetSnapshot`` from its store (desired instances, agent reports,
router reports, the rollout row) and a clock reading, calls ``planner.plan(snapshot)``
and gets a ``Plan``: a few actions that are safe to take *now*, or none and a
``waiting_for`` reason. The engine records each action in the store (keyed by
``Action.key``) before it takes it, so that a controller killed at any point and
restarted never takes the same action twice; the planner, being level-triggered, also
never proposes an action whose effect is already visible in the snapshot.

Everything here is a frozen, keyword-only dataclass; ids are strings in the protocol's
form (instance ``HOST/APP/VERSION/N``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from skewless.core.analysis import AnalysisSpec, VersionStats
from skewless.core.model import Desired, InstanceState, RolloutState, Strategy, VersionState

TableState = Literal["absent", "ready", "draining"]
"""How routers see an instance: not in the route table, taking new work, or draining."""

SmokeState = Literal["pending", "passed", "failed"]


@dataclass(frozen=True, kw_only=True)
class HostView:
    id: str
    slots: int
    """How many instances the host may run at once (all apps, all versions)."""
    alive: bool = True
    """False when the agent has not reported within its deadline."""


@dataclass(frozen=True, kw_only=True)
class InstanceView:
    id: str
    host: str
    version: str
    """The version the controller asked for."""
    desired: Desired
    state: InstanceState
    """What the agent last reported (``starting`` until it has reported)."""
    running_version: str | None = None
    """The version the agent says the process really runs (None: not reported yet)."""
    table: TableState = "absent"
    smoke: SmokeState = "pending"
    drain_generation: int | None = None
    """Route-table generation that first showed this instance draining."""
    inflight: int = 0
    """In-flight requests and open tunnels on it, summed over router reports."""
    restarts: int = 0
    reason: str | None = None
    """Why it failed (agent report ``reason``) or what its smoke checks saw."""
    drained_at: float | None = None
    """Clock reading when it was marked draining (for ``RolloutSpec.drain_timeout``)."""


@dataclass(frozen=True, kw_only=True)
class VersionView:
    version: str
    state: VersionState
    weight: float
    """Share of new sessions (0..1)."""
    capacity: float
    """Load (requests/s) one instance is sized for (the release's ``capacity``)."""
    load: float = 0.0
    """Live load on this version (requests/s), from router reports."""
    sessions: int = 0
    """Estimated live sessions pinned to this version, from router reports."""
    last_pinned_at: float | None = None
    """Clock reading of the last request pinned to it that any router saw."""
    live_since: float | None = None
    """When this version first took new sessions (for the max session lifetime)."""
    weight_zero_since: float | None = None
    """When its weight last dropped to 0 (its youngest session can be no older)."""
    stats: VersionStats | None = None
    """Router counters since the current canary step began (for canary analysis)."""


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    app: str
    to_version: str
    strategy: Strategy
    instances: int
    """How many instances the new version should end with."""
    batch: int = 1
    """Rolling: how many hosts move at once."""
    max_unavailable: int = 1
    """Most instances (of all versions) out of service at once."""
    max_surge: int = 0
    """Extra instances allowed above ``instances`` while the rollout runs."""
    headroom: float = 1.3
    steps: tuple[float, ...] = (1.0,)
    """Canary weights of new sessions for the new version, ending at 1.0."""
    progress_deadline: float = 600.0
    idle_timeout: float = 1800.0
    max_lifetime: float = 43200.0
    rollback_of: str | None = None
    """Set when this rollout undoes a broken release: pins to it are re-pinned."""
    step_interval: float = 0.0
    """Least time (s) at one canary step before the next (keep below progress_deadline)."""
    analysis: AnalysisSpec | None = None
    """Canary analysis thresholds; None: no analysis."""
    drain_timeout: float | None = None
    """Stop a draining instance after this long even with work in flight (None: never)."""
    succeed_when: Literal["live", "retired"] = "live"
    """``live``: the rollout succeeds as soon as the new version is fully live; old
    versions keep retiring after success (the engine keeps planning the finished rollout
    until ``Plan.settled``). ``retired``: only once every other version is also retired
    and its instances stopped."""


@dataclass(frozen=True, kw_only=True)
class FleetSnapshot:
    now: float
    rollout: RolloutSpec
    state: RolloutState
    started_at: float
    last_progress_at: float
    """Clock reading of the last action that moved the rollout forward."""
    step: int = 0
    """Index into ``rollout.steps`` of the weight currently applied."""
    hosts: tuple[HostView, ...] = ()
    versions: tuple[VersionView, ...] = ()
    instances: tuple[InstanceView, ...] = ()
    """Every instance of the app that is not stopped and forgotten."""
    other_apps_slots: Mapping[str, int] = field(default_factory=dict)
    """Per host, slots used by other apps' instances."""
    table_generation: int = 0
    routers_generation: int | None = None
    """Lowest generation that every live router reports serving (None: no router)."""
    step_since: float | None = None
    """Clock reading when the current weights were applied (for ``step_interval``)."""
    past_instance_ids: frozenset[str] = frozenset()
    """Ids of this app's instances that are stopped and forgotten: never reused."""


# ---- actions -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StartInstance:
    instance_id: str
    host: str
    version: str
    kind: Literal["start"] = "start"

    @property
    def key(self) -> str:
        return f"start:{self.instance_id}"


@dataclass(frozen=True, kw_only=True)
class RunSmoke:
    """Send the release's smoke checks straight to a ready instance not yet in the table."""

    instance_id: str
    kind: Literal["smoke"] = "smoke"

    @property
    def key(self) -> str:
        return f"smoke:{self.instance_id}"


@dataclass(frozen=True, kw_only=True)
class AddToTable:
    instance_id: str
    kind: Literal["add"] = "add"

    @property
    def key(self) -> str:
        return f"add:{self.instance_id}"


@dataclass(frozen=True, kw_only=True)
class DrainInstance:
    """Mark an instance draining in the route table (no new work reaches it)."""

    instance_id: str
    kind: Literal["drain"] = "drain"

    @property
    def key(self) -> str:
        return f"drain:{self.instance_id}"


@dataclass(frozen=True, kw_only=True)
class StopInstance:
    """Ask the agent to stop an instance: only once routers no longer send it work."""

    instance_id: str
    kind: Literal["stop"] = "stop"

    @property
    def key(self) -> str:
        return f"stop:{self.instance_id}"


@dataclass(frozen=True, kw_only=True)
class SetWeights:
    weights: tuple[tuple[str, float], ...]
    """(version, share of new sessions); shares sum to 1."""
    step: int
    kind: Literal["weights"] = "weights"
    basis: int | None = None
    """Route-table generation the change was computed from, so that the same weights set
    twice in one rollout (back and forth) get two keys, while a replay gets the same."""

    @property
    def key(self) -> str:
        key = f"weights:{self.step}:" + ",".join(f"{v}={w:g}" for v, w in self.weights)
        return key if self.basis is None else f"{key}@{self.basis}"


@dataclass(frozen=True, kw_only=True)
class RetireVersion:
    version: str
    reason: Literal["sessions_idle", "max_lifetime", "rolled_back", "no_sessions"]
    kind: Literal["retire"] = "retire"

    @property
    def key(self) -> str:
        return f"retire:{self.version}"


@dataclass(frozen=True, kw_only=True)
class FinishRollout:
    state: RolloutState
    """succeeded, failed or rolled_back."""
    reason: str
    kind: Literal["finish"] = "finish"

    @property
    def key(self) -> str:
        return f"finish:{self.state.value}"


Action = (
    StartInstance
    | RunSmoke
    | AddToTable
    | DrainInstance
    | StopInstance
    | SetWeights
    | RetireVersion
    | FinishRollout
)


@dataclass(frozen=True, kw_only=True)
class Plan:
    actions: tuple[Action, ...] = ()
    waiting_for: str | None = None
    """Why nothing (more) can be done now, in words for status and events, e.g.
    ``"v1 still carries 120 req/s and needs 2 of its 3 instances"``."""
    floors: Mapping[str, int] = field(default_factory=dict)
    """Per version: ready instances its live load needs (the capacity floor)."""
    settled: bool = False
    """True when the rollout is over and nothing is left to do (every other version
    retired, its instances stopped): the engine may stop calling the planner."""
