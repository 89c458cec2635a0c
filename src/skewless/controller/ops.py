"""Operator commands: deploy, pause, resume, abort, rollback. Each command validates
first and then changes the store in one transaction, so a refused command changes nothing.
Read models live in ``status.py``.
"""

from __future__ import annotations

from typing import Any

from skewless.controller import tables
from skewless.controller.actions import shift_weight
from skewless.controller.status import ApiError, current_version, need_app, rollout_json
from skewless.controller.store import AppRow, RolloutRow, Store, VersionRow
from skewless.core.errors import ConfigError
from skewless.core.model import ROLLOUT_TRANSITIONS, TERMINAL_ROLLOUT_STATES, RolloutState, advance
from skewless.core.spec import ResolvedOptions, RolloutOptions, check_name, parse_deploy


def _active(store: Store, app: str) -> RolloutRow | None:
    r = store.latest_rollout(app)
    if r is None or RolloutState(r.state) in TERMINAL_ROLLOUT_STATES:
        return None
    return r


def _ensure_live(store: Store, app: str, version: str) -> None:
    v = store.get_version(app, version)
    if v is None:
        store.put_version(
            VersionRow(
                app=app,
                version=version,
                state="live",
                weight=0.0,
                live_since=None,
                weight_zero_since=None,
            )
        )
    elif v.state != "live":
        store.put_version(
            VersionRow(
                app=app,
                version=version,
                state="live",
                weight=v.weight,
                live_since=v.live_since,
                weight_zero_since=v.weight_zero_since,
            )
        )


def _app_settings(
    old: AppRow | None, options: RolloutOptions, resolved: ResolvedOptions
) -> dict[str, Any]:
    """The app's session and host settings after a deploy: what the body says, else what
    the app had (a deploy that does not mention them changes neither), else defaults."""
    before = old.session if old is not None else {}
    session = resolved.to_json()["session"]
    if not options.session_given and old is not None:
        session = {k: before.get(k, v) for k, v in session.items()}
    hosts = list(options.hosts) if options.hosts is not None else before.get("hosts", ["*"])
    return {**session, "hosts": hosts}


def deploy(store: Store, app: str, body: object, now: float) -> dict[str, Any]:
    try:
        check_name("app", app)
        release, options = parse_deploy(body)
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    active = _active(store, app)
    if active is not None:
        raise ApiError(
            409,
            f"app {app} has a rollout in progress ({active.to_version}, {active.state}): "
            f"wait for it, or abort it with 'skewless abort {app}'",
        )
    existing = store.get_release(app, release.version)
    if existing is not None and existing.spec != release.to_json():
        raise ApiError(
            409,
            f"release {app} {release.version} already exists with a different spec; "
            "releases are immutable: deploy it under a new version",
        )
    current = current_version(store, app)
    if current == release.version:
        raise ApiError(409, f"{app} {release.version} is already the live release")
    instances = options.instances
    if instances is None:
        last = store.latest_rollout(app)
        instances = int(last.options.get("instances", 1)) if last else 1
    resolved = options.resolve(instances)
    with store.transaction():
        store.add_release(app, release.version, release.to_json(), now)
        store.upsert_app(app, _app_settings(store.get_app(app), options, resolved), now)
        _ensure_live(store, app, release.version)
        rollout_id = store.create_rollout(
            app=app,
            from_version=current,
            to_version=release.version,
            strategy=resolved.strategy,
            options=resolved.to_json(),
            now=now,
        )
        store.add_event(
            app=app,
            kind="deploy",
            message=f"deploy {app} {release.version} ({resolved.strategy}, "
            f"{resolved.instances} instances)" + (f", from {current}" if current else ""),
            now=now,
            data={"rollout_id": rollout_id, "version": release.version},
        )
        tables.publish_table(store)
    rollout = store.get_rollout(rollout_id)
    assert rollout is not None
    return {"app": app, "version": release.version, "rollout": rollout_json(rollout)}


def _move(
    store: Store, app: str, target: RolloutState, verb: str, now: float, **extra: Any
) -> RolloutRow:
    need_app(store, app)
    r = _active(store, app)
    if r is None:
        raise ApiError(409, f"app {app} has no rollout in progress to {verb}")
    current = RolloutState(r.state)
    if current == target:
        return r  # pausing a paused rollout is a no-op, not an error
    if current == RolloutState.PENDING and target == RolloutState.PAUSED:
        current = RolloutState.PROGRESSING  # not started yet: pausing holds it before step one
    try:
        advance(ROLLOUT_TRANSITIONS, current, target)
    except Exception:
        raise ApiError(409, f"cannot {verb} a rollout that is {r.state}") from None
    store.update_rollout(r.id, state=target.value, **extra)
    store.add_event(
        app=app,
        kind="rollout",
        message=f"rollout {r.id} to {r.to_version} {target.value} by operator ({verb})",
        now=now,
        data={"rollout_id": r.id, "state": target.value},
    )
    return r


def pause(store: Store, app: str, now: float) -> dict[str, Any]:
    with store.transaction():
        r = _move(store, app, RolloutState.PAUSED, "pause", now, waiting_for="paused by operator")
    return {"rollout": rollout_json(store.get_rollout(r.id))}


def resume(store: Store, app: str, now: float) -> dict[str, Any]:
    need_app(store, app)
    r = _active(store, app)
    if r is None or r.state != "paused":
        raise ApiError(409, f"app {app} has no paused rollout to resume")
    with store.transaction():
        _move(
            store,
            app,
            RolloutState.PROGRESSING,
            "resume",
            now,
            last_progress_at=now,
            waiting_for=None,
        )
    return {"rollout": rollout_json(store.get_rollout(r.id))}


def _weights_back(store: Store, app: str, old: str, new: str, now: float) -> None:
    """New sessions go back to ``old``; pinned sessions keep their version."""
    v_old = store.get_version(app, old)
    if v_old is None or v_old.state == "retired":
        return
    for v in store.list_versions(app):
        store.put_version(shift_weight(v, 1.0 if v.version == old else 0.0, now))
    tables.publish_table(store)


def abort(store: Store, app: str, now: float) -> dict[str, Any]:
    with store.transaction():
        r = _move(
            store,
            app,
            RolloutState.ABORTED,
            "abort",
            now,
            reason="aborted by operator",
            finished_at=now,
            waiting_for=None,
        )
        if r.from_version:
            _weights_back(store, app, r.from_version, r.to_version, now)
    return {"rollout": rollout_json(store.get_rollout(r.id))}


def rollback(store: Store, app: str, body: dict[str, Any], now: float) -> dict[str, Any]:
    need_app(store, app)
    broken = body.get("broken", True)
    if not isinstance(broken, bool):
        raise ApiError(400, "broken must be true or false")
    last = store.latest_rollout(app)
    if last is None or not last.from_version:
        raise ApiError(409, f"app {app} has no previous release to roll back to")
    target = last.from_version
    if store.get_release(app, target) is None:
        raise ApiError(409, f"release {app} {target} is not in the store")
    with store.transaction():
        if RolloutState(last.state) not in TERMINAL_ROLLOUT_STATES:
            store.update_rollout(
                last.id,
                state=RolloutState.ROLLED_BACK.value,
                reason=f"rolled back to {target}",
                finished_at=now,
                waiting_for=None,
            )
            store.add_event(
                app=app,
                kind="rollout",
                message=f"rollout {last.id} to {last.to_version} rolled_back",
                now=now,
                data={"rollout_id": last.id, "state": "rolled_back"},
            )
        _ensure_live(store, app, target)
        rollout_id = store.create_rollout(
            app=app,
            from_version=last.to_version,
            to_version=target,
            strategy=last.strategy,
            options=last.options,
            now=now,
            rollback_of=last.to_version if broken else None,
        )
        store.add_event(
            app=app,
            kind="rollback",
            message=f"roll back {app} from {last.to_version} to {target} ({last.strategy})"
            + (f"; sessions pinned to {last.to_version} are re-pinned" if broken else ""),
            now=now,
            data={"rollout_id": rollout_id, "version": target},
        )
        tables.publish_table(store)
    return {"app": app, "version": target, "rollout": rollout_json(store.get_rollout(rollout_id))}
