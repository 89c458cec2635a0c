"""Shared vocabulary of skewless (see DESIGN.md): the states of instances, versions and
rollouts, and the one place where each state machine's transitions are checked.

States are ``StrEnum`` members so that they serialise as the exact strings of the
protocol (``"ready"``, ``"draining"`` ...). Each machine is a transition table; ``advance``
is the only function that moves a state, and an illegal move raises ``ConfigError``
without changing anything (the caller still holds the old value).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, TypeVar

from skewless.core.errors import SkewlessError


class InstanceState(StrEnum):
    """What an agent observes of one process (agent report ``state``)."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class VersionState(StrEnum):
    """A version's state in the route table."""

    LIVE = "live"
    DRAINING = "draining"
    RETIRED = "retired"


class RolloutState(StrEnum):
    """A rollout's life: pending -> progressing <-> paused -> succeeded | rolled_back | failed.

    ``aborted`` extends DESIGN.md: the operator stopped the rollout where it stood and
    sent new sessions back to the old version.
    """

    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    ABORTED = "aborted"


Strategy = Literal["rolling", "side-by-side", "surge"]
STRATEGIES: tuple[Strategy, ...] = ("rolling", "side-by-side", "surge")

Desired = Literal["running", "draining", "stopped"]
"""What the controller asks an agent to do with an instance (desired state ``desired``)."""


class IllegalTransition(SkewlessError):
    """A state machine was asked for a move its table does not allow."""


INSTANCE_TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    InstanceState.STARTING: frozenset(
        {InstanceState.READY, InstanceState.FAILED, InstanceState.STOPPED, InstanceState.DRAINING}
    ),
    InstanceState.READY: frozenset(
        {
            InstanceState.DRAINING,
            InstanceState.FAILED,
            InstanceState.STOPPED,
            InstanceState.STARTING,
        }
    ),
    InstanceState.DRAINING: frozenset({InstanceState.STOPPED, InstanceState.FAILED}),
    InstanceState.STOPPED: frozenset({InstanceState.STARTING}),
    InstanceState.FAILED: frozenset({InstanceState.STARTING, InstanceState.STOPPED}),
}

VERSION_TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    VersionState.LIVE: frozenset({VersionState.DRAINING, VersionState.RETIRED}),
    VersionState.DRAINING: frozenset({VersionState.LIVE, VersionState.RETIRED}),
    VersionState.RETIRED: frozenset({VersionState.LIVE}),
}

ROLLOUT_TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    RolloutState.PENDING: frozenset(
        {RolloutState.PROGRESSING, RolloutState.ABORTED, RolloutState.FAILED}
    ),
    RolloutState.PROGRESSING: frozenset(
        {
            RolloutState.PAUSED,
            RolloutState.SUCCEEDED,
            RolloutState.ROLLED_BACK,
            RolloutState.FAILED,
            RolloutState.ABORTED,
        }
    ),
    RolloutState.PAUSED: frozenset(
        {
            RolloutState.PROGRESSING,
            RolloutState.ROLLED_BACK,
            RolloutState.FAILED,
            RolloutState.ABORTED,
        }
    ),
    RolloutState.SUCCEEDED: frozenset(),
    RolloutState.ROLLED_BACK: frozenset(),
    RolloutState.FAILED: frozenset(),
    RolloutState.ABORTED: frozenset(),
}

TERMINAL_ROLLOUT_STATES = frozenset(s for s, nxt in ROLLOUT_TRANSITIONS.items() if not nxt)

S = TypeVar("S", InstanceState, VersionState, RolloutState)


def advance(table: dict[S, frozenset[S]], current: S, target: S) -> S:
    """Return ``target`` if ``current -> target`` is in ``table``; staying put is allowed.

    Raises ``IllegalTransition`` (and so changes nothing) otherwise.
    """
    if current == target or target in table[current]:
        return target
    raise IllegalTransition(f"illegal transition {current.value} -> {target.value}")
