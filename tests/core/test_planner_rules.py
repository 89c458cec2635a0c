"""Playbook tests of the planner: this fleet in, these actions (or this wait) out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from skewless.core.analysis import AnalysisSpec, VersionStats
from skewless.core.model import InstanceState, RolloutState, VersionState
from skewless.core.plan import (
    AddToTable,
    DrainInstance,
    FinishRollout,
    FleetSnapshot,
    HostView,
    InstanceView,
    Plan,
    RetireVersion,
    RolloutSpec,
    RunSmoke,
    SetWeights,
    StartInstance,
    StopInstance,
    VersionView,
)
from skewless.core.planner import plan

SAME = "same"


def inst(
    iid: str,
    *,
    state: InstanceState = InstanceState.READY,
    table: str = "ready",
    desired: str = "running",
    smoke: str = "passed",
    rv: str | None = SAME,
    **kw: Any,
) -> InstanceView:
    host, _app, version, _n = iid.split("/")
    return InstanceView(
        id=iid,
        host=host,
        version=version,
        desired=desired,  # type: ignore[arg-type]
        state=state,
        running_version=version if rv == SAME else rv,
        table=table,  # type: ignore[arg-type]
        smoke=smoke,  # type: ignore[arg-type]
        **kw,
    )


def new(iid: str, **kw: Any) -> InstanceView:
    """A target instance just started (not ready, not in the table)."""
    kw.setdefault("state", InstanceState.STARTING)
    kw.setdefault("table", "absent")
    kw.setdefault("smoke", "pending")
    kw.setdefault("rv", None)
    return inst(iid, **kw)


def ver(name: str, weight: float, **kw: Any) -> VersionView:
    kw.setdefault("capacity", 100.0)
    if "state" not in kw:
        kw["state"] = VersionState.LIVE if weight > 0 else VersionState.DRAINING
    if weight > 0:
        kw.setdefault("live_since", 0.0)
    return VersionView(version=name, weight=weight, **kw)


def snap(
    *instances: InstanceView,
    versions: tuple[VersionView, ...] | None = None,
    hosts: dict[str, int] | None = None,
    state: RolloutState = RolloutState.PROGRESSING,
    now: float = 1000.0,
    last_progress_at: float = 990.0,
    **spec_kw: Any,
) -> FleetSnapshot:
    spec_kw.setdefault("strategy", "rolling")
    spec_kw.setdefault("instances", 2)
    spec = RolloutSpec(app="shop", to_version="v2", **spec_kw)
    if versions is None:
        versions = (ver("v1", 1.0), ver("v2", 0.0))
    if hosts is None:
        hosts = {"h1": 2, "h2": 2}
    return FleetSnapshot(
        now=now,
        rollout=spec,
        state=state,
        started_at=0.0,
        last_progress_at=last_progress_at,
        hosts=tuple(HostView(id=h, slots=s) for h, s in hosts.items()),
        versions=versions,
        instances=instances,
        table_generation=5,
        routers_generation=5,
    )


def keys(result: Plan) -> list[str]:
    return [a.key for a in result.actions]


# ---- new instances -----------------------------------------------------------------


def test_planner_starts_on_free_slots_with_deterministic_ids() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h2/shop/v1/0"),
        strategy="side-by-side",
    )
    result = plan(s)
    assert keys(result) == ["start:h1/shop/v2/0", "start:h2/shop/v2/0"]
    assert plan(s) == result  # a replay after a crash proposes the same ids


def test_planner_never_reuses_a_forgotten_id() -> None:
    s = replace(
        snap(inst("h1/shop/v1/0"), strategy="side-by-side", instances=1, hosts={"h1": 2}),
        past_instance_ids=frozenset({"h1/shop/v2/0"}),
    )
    assert keys(plan(s)) == ["start:h1/shop/v2/1"]


@pytest.mark.parametrize(
    ("instance", "expected", "waiting"),
    [
        (new("h1/shop/v2/0"), [], "1 instance of v2 starting: h1/shop/v2/0"),
        (
            new("h1/shop/v2/0", state=InstanceState.READY),
            [],
            "host h1 has not reported the version of h1/shop/v2/0",
        ),
        (
            new("h1/shop/v2/0", state=InstanceState.READY, rv="v2"),
            ["smoke:h1/shop/v2/0"],
            "smoke checks on h1/shop/v2/0",
        ),
        (
            new("h1/shop/v2/0", state=InstanceState.READY, rv="v2", smoke="passed"),
            ["add:h1/shop/v2/0"],
            None,
        ),
        (
            new("h1/shop/v2/0", state=InstanceState.READY, rv="v1"),
            [],
            "host h1 runs v1 for h1/shop/v2/0, asked for v2",
        ),
    ],
)
def test_planner_new_instance_lifecycle(
    instance: InstanceView, expected: list[str], waiting: str | None
) -> None:
    s = snap(inst("h2/shop/v1/0"), instance, instances=1)
    result = plan(s)
    assert keys(result) == expected
    if waiting is None:
        assert result.waiting_for is None or "h1/shop/v2/0" not in result.waiting_for
    else:
        assert result.waiting_for is not None and waiting in result.waiting_for


def test_planner_wrong_running_version_blocks_completion_then_deadline_fails() -> None:
    wrong = inst("h1/shop/v2/0", rv="v1")
    s = snap(
        inst("h2/shop/v2/1"),
        wrong,
        versions=(ver("v1", 0.0, state=VersionState.RETIRED), ver("v2", 1.0)),
    )
    result = plan(s)
    assert not any(isinstance(a, FinishRollout) for a in result.actions)
    assert result.waiting_for is not None
    assert "host h1 runs v1 for h1/shop/v2/0, asked for v2" in result.waiting_for
    late = plan(replace(s, now=2000.0, last_progress_at=1000.0))
    finish = late.actions[-1]
    assert isinstance(finish, FinishRollout) and finish.state is RolloutState.FAILED
    assert "no progress for 1000 s" in finish.reason
    assert "host h1 runs v1" in finish.reason


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (
            new("h1/shop/v2/0", state=InstanceState.READY, rv="v2", smoke="failed", reason="500"),
            "smoke checks failed on h1/shop/v2/0: 500",
        ),
        (
            new("h1/shop/v2/0", state=InstanceState.FAILED, reason="exit 1"),
            "h1/shop/v2/0 failed on h1: exit 1",
        ),
    ],
)
def test_planner_failed_new_instance_fails_the_rollout(broken: InstanceView, reason: str) -> None:
    s = snap(
        inst("h2/shop/v1/0"),
        inst("h2/shop/v2/1"),
        broken,
        versions=(ver("v1", 0.5), ver("v2", 0.5)),
    )
    result = plan(s)
    assert result.actions[-1] == FinishRollout(state=RolloutState.FAILED, reason=reason)
    weights = next(a for a in result.actions if isinstance(a, SetWeights))
    assert dict(weights.weights) == {"v1": 1.0, "v2": 0.0}
    assert StopInstance(instance_id="h1/shop/v2/0") in result.actions


# ---- weights -----------------------------------------------------------------------


def test_planner_weight_grows_with_ready_capacity() -> None:
    # 100 req/s on v1; one v2 instance carries 100: 100 / (100 * 1.3) = 76 %.
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h2/shop/v1/1"),
        inst("h1/shop/v2/0"),
        versions=(ver("v1", 1.0, load=100.0), ver("v2", 0.0)),
        instances=2,
    )
    result = plan(s)
    weights = next(a for a in result.actions if isinstance(a, SetWeights))
    assert dict(weights.weights) == {"v1": pytest.approx(0.24), "v2": 0.76}
    assert result.waiting_for is not None and "v2 gets 76% of new sessions" in result.waiting_for


def test_planner_canary_steps_one_at_a_time_with_interval() -> None:
    base = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v2/0"),
        inst("h2/shop/v2/1"),
        steps=(0.1, 0.5, 1.0),
        step_interval=60.0,
    )
    first = plan(base)
    assert [dict(a.weights) for a in first.actions if isinstance(a, SetWeights)] == [
        {"v1": 0.9, "v2": 0.1}
    ]
    at_10 = replace(base, versions=(ver("v1", 0.9), ver("v2", 0.1)), step_since=980.0)
    held = plan(at_10)
    assert not any(isinstance(a, SetWeights) for a in held.actions)
    assert held.waiting_for is not None and "canary step 10% holds" in held.waiting_for
    later = plan(replace(at_10, step_since=900.0))
    assert [dict(a.weights) for a in later.actions if isinstance(a, SetWeights)] == [
        {"v1": 0.5, "v2": 0.5}
    ]


def test_planner_never_gives_new_sessions_to_a_version_without_ready_instance() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v2/0", state=InstanceState.STARTING),
        versions=(ver("v1", 0.5), ver("v2", 0.5)),
    )
    weights = next(a for a in plan(s).actions if isinstance(a, SetWeights))
    assert dict(weights.weights) == {"v1": 1.0, "v2": 0.0}


def test_planner_surge_switches_only_with_the_full_set() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v2/0"),
        new("h2/shop/v2/0"),
        strategy="surge",
    )
    result = plan(s)
    assert not any(isinstance(a, SetWeights) for a in result.actions)
    assert result.waiting_for is not None
    assert "surge switches when all 2 instances of v2 are ready (1 are)" in result.waiting_for


def test_planner_canary_analysis_failure_fails_the_rollout() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v2/0"),
        versions=(
            ver("v1", 0.9, stats=VersionStats(requests=1000, errors=1)),
            ver("v2", 0.1, stats=VersionStats(requests=200, errors=20)),
        ),
        analysis=AnalysisSpec(),
        steps=(0.1, 1.0),
    )
    finish = plan(s).actions[-1]
    assert isinstance(finish, FinishRollout) and finish.state is RolloutState.FAILED
    assert finish.reason == "canary analysis failed: v2 error rate 10.0% vs v1 0.1% (allowed +1.0%)"


# ---- capacity guard and drains -----------------------------------------------------


def test_planner_capacity_guard_holds_a_rolling_step() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v1/1"),
        inst("h2/shop/v1/2"),
        inst("h2/shop/v1/3"),
        versions=(ver("v1", 1.0, load=240.0, capacity=80.0), ver("v2", 0.0)),
        instances=4,
        max_unavailable=2,
    )
    result = plan(s)
    assert keys(result) == []
    assert result.floors["v1"] == 4  # ceil(240 * 1.3 / 80)
    assert result.waiting_for is not None
    assert "v1 still carries 240 req/s and needs 4 of its 4 instances" in result.waiting_for


def test_planner_rolling_drains_what_the_load_does_not_need() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v1/1"),
        inst("h2/shop/v1/2"),
        inst("h2/shop/v1/3"),
        versions=(ver("v1", 1.0, load=120.0, capacity=80.0), ver("v2", 0.0)),
        instances=4,
        batch=3,
        max_unavailable=3,
    )
    result = plan(s)
    # floor ceil(120 * 1.3 / 80) = 2: two may go; batch 3 but the floor holds the third.
    assert keys(result) == ["drain:h1/shop/v1/0", "drain:h1/shop/v1/1"]
    assert result.waiting_for is not None
    assert "v1 still carries 120 req/s and needs 2 of its 2 instances" in result.waiting_for


def test_planner_max_unavailable_limits_drains() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v1/1"),
        inst("h2/shop/v1/2"),
        inst("h2/shop/v1/3"),
        instances=4,
        batch=3,
        max_unavailable=1,
    )
    result = plan(s)
    assert keys(result) == ["drain:h1/shop/v1/0"]
    assert result.waiting_for is not None
    assert "max unavailable 1: 3 instances in service, at least 3 must stay" in result.waiting_for


@pytest.mark.parametrize(
    ("routers", "inflight", "drained_at", "stops"),
    [
        (5, 0, None, False),  # routers still on generation 5 (drained at 6)
        (6, 2, None, False),  # two requests in flight
        (6, 0, None, True),
        (6, 2, 900.0, True),  # drain_timeout (30 s) passed
    ],
)
def test_planner_stops_a_drained_instance_only_when_routers_let_go(
    routers: int, inflight: int, drained_at: float | None, stops: bool
) -> None:
    draining = inst(
        "h1/shop/v1/0",
        table="draining",
        desired="draining",
        drain_generation=6,
        inflight=inflight,
        drained_at=drained_at,
    )
    s = replace(
        snap(draining, inst("h2/shop/v1/1"), drain_timeout=30.0, batch=2),
        routers_generation=routers,
    )
    result = plan(s)
    assert (StopInstance(instance_id="h1/shop/v1/0") in result.actions) is stops
    if not stops:
        assert result.waiting_for is not None and "h1/shop/v1/0" in result.waiting_for


# ---- retirement --------------------------------------------------------------------

LIVE_V2 = (inst("h1/shop/v2/0"), inst("h2/shop/v2/1"))


@pytest.mark.parametrize(
    ("v1", "reason"),
    [
        (ver("v1", 0.0, last_pinned_at=950.0, live_since=0.0, weight_zero_since=900.0), None),
        (ver("v1", 0.0, last_pinned_at=900.0, live_since=0.0, weight_zero_since=800.0), None),
        (
            ver("v1", 0.0, last_pinned_at=800.0, live_since=0.0, weight_zero_since=700.0),
            "sessions_idle",
        ),
        (
            ver(
                "v1",
                0.0,
                last_pinned_at=999.0,
                sessions=3,
                live_since=0.0,
                weight_zero_since=0.0,
            ),
            "max_lifetime",
        ),
        (ver("v1", 0.0, last_pinned_at=None, live_since=0.0, weight_zero_since=950.0), None),
        (
            ver("v1", 0.0, last_pinned_at=None, live_since=0.0, weight_zero_since=700.0),
            "sessions_idle",
        ),
        (ver("v1", 0.0, last_pinned_at=None, live_since=None), "no_sessions"),
    ],
)
def test_planner_retires_only_after_idle_timeout_or_max_lifetime(
    v1: VersionView, reason: str | None
) -> None:
    # idle timeout 120 s, max lifetime 900 s, now 1000.
    s = snap(
        inst("h1/shop/v1/0"),
        *LIVE_V2,
        versions=(v1, ver("v2", 1.0)),
        state=RolloutState.SUCCEEDED,
        idle_timeout=120.0,
        max_lifetime=900.0,
    )
    result = plan(s)
    retire = [a for a in result.actions if isinstance(a, RetireVersion)]
    if reason is None:
        assert retire == []
        assert DrainInstance(instance_id="h1/shop/v1/0") not in result.actions
        assert (
            result.waiting_for is not None and "v1 keeps serving its sessions" in result.waiting_for
        )
        assert result.floors["v1"] == 1
    else:
        assert retire == [RetireVersion(version="v1", reason=reason)]  # type: ignore[arg-type]


def test_planner_retired_version_is_drained_then_stopped_then_settled() -> None:
    versions = (ver("v1", 0.0, state=VersionState.RETIRED), ver("v2", 1.0))
    s = snap(inst("h1/shop/v1/0"), *LIVE_V2, versions=versions, state=RolloutState.SUCCEEDED)
    assert keys(plan(s)) == ["drain:h1/shop/v1/0"]
    drained = inst("h1/shop/v1/0", table="draining", desired="draining", drain_generation=5)
    s2 = replace(s, instances=(drained, *LIVE_V2))
    assert keys(plan(s2)) == ["stop:h1/shop/v1/0"]
    stopped = replace(drained, desired="stopped", state=InstanceState.STOPPED)
    done = plan(replace(s2, instances=(stopped, *LIVE_V2)))
    assert done.actions == () and done.settled


def test_planner_rollback_retires_the_broken_version_at_once() -> None:
    # Rolling back to v1: v2 is broken; its sessions (load 50) are re-pinned as soon as
    # v1 can carry them.
    versions = (
        ver("v1", 1.0, load=50.0),
        ver("v2", 0.0, load=50.0, sessions=40, last_pinned_at=999.0, weight_zero_since=990.0),
    )
    base = dict(versions=versions, instances=2, state=RolloutState.PROGRESSING)
    s = replace(
        snap(inst("h1/shop/v1/0"), inst("h2/shop/v1/1"), inst("h2/shop/v2/0"), **base),
        rollout=RolloutSpec(
            app="shop", to_version="v1", strategy="rolling", instances=2, rollback_of="v2"
        ),
    )
    result = plan(s)
    assert RetireVersion(version="v2", reason="rolled_back") in result.actions
    short = replace(s, instances=(inst("h1/shop/v1/0"), inst("h2/shop/v2/0")))
    held = plan(short)
    assert not any(isinstance(a, RetireVersion) for a in held.actions)
    assert held.waiting_for is not None and "v2 is rolled back" in held.waiting_for


def test_planner_ordinary_rollback_keeps_sessions_until_idle() -> None:
    versions = (
        ver("v1", 1.0),
        ver("v2", 0.0, sessions=4, last_pinned_at=999.0, weight_zero_since=990.0),
    )
    s = replace(
        snap(inst("h1/shop/v1/0"), inst("h2/shop/v1/1"), inst("h2/shop/v2/0"), versions=versions),
        rollout=RolloutSpec(app="shop", to_version="v1", strategy="rolling", instances=2),
    )
    result = plan(s)
    assert not any(isinstance(a, RetireVersion) for a in result.actions)
    assert DrainInstance(instance_id="h2/shop/v2/0") not in result.actions


# ---- rollout states ----------------------------------------------------------------


def test_planner_paused_does_nothing() -> None:
    s = snap(inst("h1/shop/v1/0"), state=RolloutState.PAUSED, now=10_000.0)
    result = plan(s)
    assert result.actions == () and result.waiting_for == "paused"


def test_planner_success_when_new_is_fully_live_while_old_keeps_its_sessions() -> None:
    versions = (
        ver("v1", 0.0, sessions=5, last_pinned_at=999.0, weight_zero_since=990.0),
        ver("v2", 1.0),
    )
    s = snap(inst("h1/shop/v1/0"), *LIVE_V2, versions=versions)
    result = plan(s)
    assert result.actions == (
        FinishRollout(
            state=RolloutState.SUCCEEDED,
            reason="v2 live on 2 instances; v1 retire when their sessions end",
        ),
    )
    after = plan(replace(s, state=RolloutState.SUCCEEDED))
    assert after.actions == () and not after.settled
    assert after.waiting_for is not None and "v1 keeps serving its sessions" in after.waiting_for


def test_planner_abort_sends_new_sessions_back_and_stops_unfinished_instances() -> None:
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h2/shop/v2/0"),
        new("h1/shop/v2/1"),
        versions=(ver("v1", 0.5), ver("v2", 0.5)),
        state=RolloutState.ABORTED,
    )
    result = plan(s)
    assert keys(result) == ["weights:0:v1=1,v2=0@5", "stop:h1/shop/v2/1"]


def test_planner_deadline_is_not_hit_while_actions_move_the_rollout() -> None:
    s = snap(inst("h1/shop/v1/0"), now=5000.0, last_progress_at=0.0, strategy="side-by-side")
    assert keys(plan(s)) == ["start:h1/shop/v2/0", "start:h2/shop/v2/0"]


def test_planner_partial_replay_proposes_only_what_is_left() -> None:
    s = snap(inst("h1/shop/v1/0"), inst("h2/shop/v1/0"), strategy="side-by-side")
    first = plan(s)
    taken = first.actions[0]
    assert isinstance(taken, StartInstance)
    # The engine took the first action, then crashed; its effect is visible now.
    s2 = replace(s, instances=(*s.instances, new(taken.instance_id)))
    second = plan(s2)
    assert taken.key not in keys(second)
    assert keys(second) == [a.key for a in first.actions[1:]]


def test_planner_missing_release_waits() -> None:
    s = snap(inst("h1/shop/v1/0"), versions=(ver("v1", 1.0),))
    result = plan(s)
    assert result.actions == ()
    assert result.waiting_for == "the snapshot has no release for v2"


def test_planner_add_is_proposed_for_each_smoked_instance_only_once_visible() -> None:
    smoked = new("h1/shop/v2/0", state=InstanceState.READY, rv="v2", smoke="passed")
    s = snap(inst("h2/shop/v1/0"), smoked, instances=1)
    assert AddToTable(instance_id="h1/shop/v2/0") in plan(s).actions
    added = replace(smoked, table="ready")
    assert (
        AddToTable(instance_id="h1/shop/v2/0")
        not in plan(replace(s, instances=(inst("h2/shop/v1/0"), added))).actions
    )
    assert RunSmoke(instance_id="h1/shop/v2/0") not in plan(s).actions


def test_planner_retired_success_waits_for_old_versions_to_be_gone() -> None:
    waiting = (
        ver("v1", 0.0, sessions=5, last_pinned_at=999.0, weight_zero_since=990.0),
        ver("v2", 1.0),
    )
    s = snap(inst("h1/shop/v1/0"), *LIVE_V2, versions=waiting, succeed_when="retired")
    held = plan(s)
    assert held.actions == ()
    assert held.waiting_for is not None and "v1 keeps serving its sessions" in held.waiting_for
    retired = (ver("v1", 0.0, state=VersionState.RETIRED), ver("v2", 1.0))
    stopped = inst("h1/shop/v1/0", desired="stopped", state=InstanceState.STOPPED, table="absent")
    done = plan(replace(s, versions=retired, instances=(stopped, *LIVE_V2)))
    assert keys(done) == ["finish:succeeded"]


def test_planner_abort_under_load_goes_back_as_fast_as_the_old_version_can_carry() -> None:
    # v2 took every new session; v1 kept one instance for its last sessions. Aborting
    # must not pour 150 req/s onto that one instance: v1 takes what it carries and grows.
    versions = (
        ver("v1", 0.0, load=50.0, sessions=20, last_pinned_at=999.0, weight_zero_since=900.0),
        ver("v2", 1.0, load=100.0),
    )
    s = snap(
        inst("h1/shop/v1/0"),
        inst("h1/shop/v2/0"),
        inst("h2/shop/v2/1"),
        versions=versions,
        state=RolloutState.ABORTED,
        strategy="side-by-side",
    )
    result = plan(s)
    weights = next(a for a in result.actions if isinstance(a, SetWeights))
    assert dict(weights.weights) == {"v1": 0.51, "v2": 0.49}  # 100 / (150 * 1.3)
    assert StartInstance(instance_id="h2/shop/v1/0", host="h2", version="v1") in result.actions
    assert not any(isinstance(a, DrainInstance) for a in result.actions)


def test_planner_deadline_spares_a_wait_for_old_sessions_only() -> None:
    # Full hosts: v2's third instance needs v1's last slot, held by v1's sessions.
    versions = (
        ver("v1", 0.0, sessions=3, last_pinned_at=4990.0, weight_zero_since=1000.0),
        ver("v2", 1.0),
    )
    s = snap(
        inst("h1/shop/v1/0"),
        *LIVE_V2,
        versions=versions,
        hosts={"h1": 2, "h2": 1},
        instances=3,
        now=5000.0,
        last_progress_at=1000.0,
        max_lifetime=43200.0,
    )
    result = plan(s)
    assert not any(isinstance(a, FinishRollout) for a in result.actions)
    assert result.waiting_for is not None and "v1 keeps serving its sessions" in result.waiting_for
    # The same wait with a host running the wrong version is a stuck rollout.
    wrong = (inst("h1/shop/v1/0"), inst("h1/shop/v2/0"), inst("h2/shop/v2/1", rv="v1"))
    stuck = plan(replace(s, instances=wrong))
    assert isinstance(stuck.actions[-1], FinishRollout)
    assert stuck.actions[-1].state is RolloutState.FAILED


# ---- slots and placement -----------------------------------------------------------


def test_planner_side_by_side_prefers_hosts_running_the_old_version() -> None:
    s = snap(
        inst("h2/shop/v1/0"),
        inst("h3/shop/v1/0"),
        strategy="side-by-side",
        hosts={"h1": 2, "h2": 2, "h3": 2},
    )
    assert keys(plan(s)) == ["start:h2/shop/v2/0", "start:h3/shop/v2/0"]


def test_planner_no_start_on_a_dead_host_or_a_slot_of_another_app() -> None:
    s = replace(
        snap(inst("h1/shop/v1/0"), strategy="side-by-side", instances=1),
        hosts=(HostView(id="h1", slots=2, alive=False), HostView(id="h2", slots=1)),
        other_apps_slots={"h2": 1},
    )
    result = plan(s)
    assert result.actions == ()
    assert result.waiting_for is not None and "needs a free slot for v2" in result.waiting_for


def test_planner_rolling_max_surge_uses_free_slots_before_draining() -> None:
    s = snap(inst("h1/shop/v1/0"), inst("h1/shop/v1/1"), max_surge=1, hosts={"h1": 2, "h2": 2})
    assert keys(plan(s)) == ["start:h2/shop/v2/0"]
    no_surge = snap(inst("h1/shop/v1/0"), inst("h1/shop/v1/1"), hosts={"h1": 2, "h2": 2})
    assert keys(plan(no_surge)) == ["drain:h1/shop/v1/0"]


def test_planner_rolling_batch_limits_moves_in_flight() -> None:
    s = snap(
        inst("h1/shop/v1/0", table="draining", drain_generation=5, inflight=1),
        inst("h1/shop/v1/1"),
        inst("h2/shop/v1/0"),
        inst("h2/shop/v1/1"),
        instances=4,
        max_unavailable=2,
    )
    result = plan(s)
    assert not any(isinstance(a, DrainInstance | StartInstance) for a in result.actions)
    assert result.waiting_for is not None and "batch of 1 in flight" in result.waiting_for


def test_planner_drains_failed_and_unknown_instances_and_target_surplus() -> None:
    s = snap(
        inst("h1/shop/v1/0", state=InstanceState.FAILED),
        inst("h1/shop/v0/0"),  # a version the snapshot does not know
        inst("h2/shop/v2/0"),
        inst("h2/shop/v2/1"),
        inst("h2/shop/v2/2"),
        versions=(ver("v1", 0.0, state=VersionState.RETIRED), ver("v2", 1.0)),
        state=RolloutState.SUCCEEDED,
        hosts={"h1": 2, "h2": 3},
    )
    assert set(keys(plan(s))) == {
        "drain:h1/shop/v1/0",
        "drain:h1/shop/v0/0",
        "drain:h2/shop/v2/0",  # three v2 instances, two wanted
    }
