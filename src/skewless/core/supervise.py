"""The agent's reconcile decision: desired state + observed instances -> actions.

Theory of operation
-------------------
The agent is level-triggered: every tick it takes what it was asked for (the last valid
``DesiredState``) and what it sees (one ``Observed`` per instance record it keeps) and
calls ``decide``. The answer is a handful of actions that move the host toward the desired
state; the supervisor performs them and, next tick, sees their effect. Nothing here
remembers anything between calls, so an agent that restarts (and re-adopts its
processes) simply resumes.

Rules, in order:

- A record whose id is no longer desired is stopped if it runs, forgotten once it is dead.
- ``desired: stopped``: stop it if it runs; once dead its state is ``stopped``.
- A running process whose release changed (command, env, version, artifact) is stopped;
  the new release is started once the old process is gone.
- ``running`` and ``draining`` are supervised alike (a crashed draining instance is
  restarted: pinned sessions may still need it), except that nothing is started afresh
  only to be drained.
- A crashed instance waits for its backoff (``restart_at``); a ``failed`` one stays failed
  until its release changes (a crash loop or a bad artifact does not heal by retrying).
- A fresh start needs a free slot. Every record that runs, starts, stops or waits for a
  restart holds a slot; desired instances get free slots in the order of the desired
  list, and the rest are refused with the reason, never silently dropped.
- An instance still ``starting`` after its ``start_timeout`` has failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from skewless.core.desired import DesiredState
from skewless.core.model import Desired, InstanceState


@dataclass(frozen=True, kw_only=True)
class Observed:
    id: str
    release_key: str
    """``InstanceSpec.release_key`` of the release this record runs (or last ran)."""
    state: InstanceState
    alive: bool
    """A process exists, or is being prepared (artifact, spawn): it holds a slot."""
    stopping: bool = False
    """A stop (SIGTERM, wait, SIGKILL) is in progress."""
    restart_at: float | None = None
    """Crashed, to be restarted at this clock reading (backoff)."""
    starting_since: float | None = None
    """Clock reading when the current process was started (for ``start_timeout``)."""

    @property
    def holds_slot(self) -> bool:
        return self.alive or self.restart_at is not None


@dataclass(frozen=True, kw_only=True)
class Start:
    instance_id: str
    kind: Literal["start"] = "start"


@dataclass(frozen=True, kw_only=True)
class Stop:
    instance_id: str
    reason: str
    kind: Literal["stop"] = "stop"


@dataclass(frozen=True, kw_only=True)
class Forget:
    """Drop the record of a dead instance that is no longer desired."""

    instance_id: str
    kind: Literal["forget"] = "forget"


@dataclass(frozen=True, kw_only=True)
class MarkStopped:
    """A dead instance that is desired stopped: cancel any restart, report ``stopped``."""

    instance_id: str
    kind: Literal["mark_stopped"] = "mark_stopped"


@dataclass(frozen=True, kw_only=True)
class FailStart:
    """Not healthy within its start timeout: kill it, report ``failed``."""

    instance_id: str
    reason: str
    kind: Literal["fail_start"] = "fail_start"


@dataclass(frozen=True, kw_only=True)
class Refuse:
    """No free slot for this desired instance."""

    instance_id: str
    reason: str
    waiting: bool
    """True when slots will free up by themselves (instances are stopping)."""
    kind: Literal["refuse"] = "refuse"


AgentAction = Start | Stop | Forget | MarkStopped | FailStart | Refuse


def decide(
    desired: DesiredState, observed: tuple[Observed, ...], *, slots: int, now: float
) -> tuple[AgentAction, ...]:
    """What to do now to move ``observed`` toward ``desired`` on a host with ``slots``."""
    actions: list[AgentAction] = []
    by_id = {o.id: o for o in observed}
    used = sum(1 for o in observed if o.holds_slot)
    stopping = sum(1 for o in observed if o.stopping)

    for gone in observed:
        if desired.get(gone.id) is None:
            if gone.alive and not gone.stopping:
                actions.append(Stop(instance_id=gone.id, reason="no longer desired"))
            elif not gone.alive:
                actions.append(Forget(instance_id=gone.id))

    for spec in desired.instances:
        o = by_id.get(spec.id)
        if o is not None:
            if o.alive and not o.stopping:
                timeout = _start_timeout(o, spec.start_timeout, now)
                if timeout is not None:
                    actions.append(FailStart(instance_id=o.id, reason=timeout))
                    continue
            if spec.desired == "stopped":
                if o.alive and not o.stopping:
                    actions.append(Stop(instance_id=o.id, reason="desired stopped"))
                elif not o.alive and o.state != InstanceState.STOPPED:
                    actions.append(MarkStopped(instance_id=o.id))
                continue
            changed = o.release_key != spec.release_key
            if o.alive:
                if changed and not o.stopping:
                    actions.append(Stop(instance_id=o.id, reason="release changed"))
                continue
            if not changed:
                if o.state == InstanceState.FAILED:
                    continue
                if o.restart_at is not None:
                    if o.restart_at <= now:
                        actions.append(Start(instance_id=o.id))
                    continue
            elif o.restart_at is not None:
                # Its slot is already held: start the new release in it.
                actions.append(Start(instance_id=o.id))
                continue
        if not _wants_fresh_start(spec.desired):
            continue
        if used < slots:
            used += 1
            actions.append(Start(instance_id=spec.id))
        elif used - stopping < slots:
            actions.append(
                Refuse(
                    instance_id=spec.id,
                    reason=f"waiting for a free slot: {stopping} instance(s) still stopping",
                    waiting=True,
                )
            )
        else:
            actions.append(
                Refuse(
                    instance_id=spec.id,
                    reason=(
                        f"refused: all {slots} slots of this host are in use "
                        "(start the agent with more --slots or ask for fewer instances)"
                    ),
                    waiting=False,
                )
            )
    return tuple(actions)


def _wants_fresh_start(desired: Desired) -> bool:
    # Nothing is started only to be drained.
    return desired == "running"


def _start_timeout(o: Observed, limit: float, now: float) -> str | None:
    if o.state != InstanceState.STARTING or o.starting_since is None:
        return None
    if now - o.starting_since <= limit:
        return None
    return f"not healthy within its start timeout of {limit:g}s"


def reported_state(state: InstanceState, desired: Desired | None) -> InstanceState:
    """The state the agent reports: a ready instance desired ``draining`` is ``draining``."""
    if desired == "draining" and state == InstanceState.READY:
        return InstanceState.DRAINING
    return state
