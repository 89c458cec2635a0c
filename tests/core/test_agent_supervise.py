"""Playbooks for the agent's reconcile decision: this desired + this observed -> these actions."""

from __future__ import annotations

from dataclasses import replace

from skewless.core.desired import DesiredState, InstanceSpec
from skewless.core.model import Desired, InstanceState
from skewless.core.supervise import (
    FailStart,
    Forget,
    MarkStopped,
    Observed,
    Refuse,
    Start,
    Stop,
    decide,
    reported_state,
)

S = InstanceState


def spec(n: int, desired: Desired = "running", version: str = "v1") -> InstanceSpec:
    return InstanceSpec(
        id=f"h1/shop/{version}/{n}",
        app="shop",
        version=version,
        command=("app", "{port}"),
        desired=desired,
        start_timeout=10.0,
    )


def want(*specs: InstanceSpec) -> DesiredState:
    return DesiredState(generation=1, instances=specs)


def seen(s: InstanceSpec, state: InstanceState = S.READY, **kw: object) -> Observed:
    fields: dict[str, object] = {"alive": state in (S.STARTING, S.READY)}
    fields.update(kw)
    return Observed(id=s.id, release_key=s.release_key, state=state, **fields)  # type: ignore[arg-type]


def test_new_instances_start_while_slots_last_then_are_refused() -> None:
    a, b, c = spec(0), spec(1), spec(2)
    actions = decide(want(a, b, c), (), slots=2, now=0)
    assert actions[:2] == (Start(instance_id=a.id), Start(instance_id=b.id))
    assert isinstance(actions[2], Refuse) and actions[2].instance_id == c.id
    assert not actions[2].waiting and "all 2 slots" in actions[2].reason


def test_running_instances_keep_their_slots_before_earlier_new_ones() -> None:
    new, old = spec(0, version="v2"), spec(0)
    actions = decide(want(new, old), (seen(old),), slots=1, now=0)
    assert [a.kind for a in actions] == ["refuse"]


def test_slot_of_a_stopping_instance_is_waited_for() -> None:
    new, old = spec(0, version="v2"), spec(0, desired="stopped")
    actions = decide(want(new, old), (seen(old, stopping=True),), slots=1, now=0)
    assert isinstance(actions[0], Refuse) and actions[0].waiting


def test_steady_state_needs_nothing() -> None:
    a = spec(0)
    assert decide(want(a), (seen(a),), slots=4, now=0) == ()


def test_undesired_records_are_stopped_then_forgotten() -> None:
    a = spec(0)
    assert decide(want(), (seen(a),), slots=4, now=0) == (
        Stop(instance_id=a.id, reason="no longer desired"),
    )
    assert decide(want(), (seen(a, stopping=True),), slots=4, now=0) == ()
    assert decide(want(), (seen(a, S.STOPPED),), slots=4, now=0) == (Forget(instance_id=a.id),)


def test_desired_stopped_stops_once_and_settles() -> None:
    a = spec(0, desired="stopped")
    assert decide(want(a), (seen(a),), slots=4, now=0) == (
        Stop(instance_id=a.id, reason="desired stopped"),
    )
    assert decide(want(a), (seen(a, stopping=True),), slots=4, now=0) == ()
    assert decide(want(a), (seen(a, S.STOPPED),), slots=4, now=0) == ()
    crashed = seen(a, S.STARTING, alive=False, restart_at=5.0)
    assert decide(want(a), (crashed,), slots=4, now=0) == (MarkStopped(instance_id=a.id),)
    assert decide(want(a), (), slots=4, now=0) == ()


def test_crashed_instance_restarts_only_after_its_backoff() -> None:
    a = spec(0)
    crashed = seen(a, S.STARTING, alive=False, restart_at=5.0)
    assert decide(want(a), (crashed,), slots=1, now=4.9) == ()
    assert decide(want(a), (crashed,), slots=1, now=5.0) == (Start(instance_id=a.id),)
    # Its slot stays its own while it waits.
    b = spec(1)
    assert [x.kind for x in decide(want(a, b), (crashed,), slots=1, now=0)] == ["refuse"]


def test_failed_stays_failed_until_the_release_changes() -> None:
    a = spec(0)
    failed = seen(a, S.FAILED, alive=False)
    assert decide(want(a), (failed,), slots=1, now=0) == ()
    changed = replace(a, command=("app2", "{port}"))
    assert decide(want(changed), (failed,), slots=1, now=0) == (Start(instance_id=a.id),)


def test_changed_release_stops_the_old_process_first() -> None:
    a = spec(0)
    changed = replace(a, env=(("X", "1"),))
    assert decide(want(changed), (seen(a),), slots=1, now=0) == (
        Stop(instance_id=a.id, reason="release changed"),
    )
    assert decide(want(changed), (seen(a, S.STOPPED),), slots=1, now=0) == (
        Start(instance_id=a.id),
    )


def test_draining_is_supervised_but_never_started_afresh() -> None:
    a = spec(0, desired="draining")
    assert decide(want(a), (), slots=1, now=0) == ()
    assert decide(want(a), (seen(a),), slots=1, now=0) == ()
    crashed = seen(a, S.STARTING, alive=False, restart_at=1.0)
    assert decide(want(a), (crashed,), slots=1, now=2.0) == (Start(instance_id=a.id),)
    assert decide(want(a), (seen(a, S.STOPPED),), slots=1, now=0) == ()


def test_start_timeout_fails_the_instance() -> None:
    a = spec(0)
    starting = seen(a, S.STARTING, starting_since=100.0)
    assert decide(want(a), (starting,), slots=1, now=110.0) == ()
    (action,) = decide(want(a), (starting,), slots=1, now=110.5)
    assert isinstance(action, FailStart) and "start timeout of 10s" in action.reason


def test_reported_state_overlays_draining_on_ready() -> None:
    assert reported_state(S.READY, "draining") == S.DRAINING
    assert reported_state(S.STARTING, "draining") == S.STARTING
    assert reported_state(S.READY, "running") == S.READY
    assert reported_state(S.STOPPED, None) == S.STOPPED
