"""Session-aware retirement (invariant 3): when may a version with weight 0 go?

A version that takes no new sessions still serves the sessions pinned to it. It is
retired, and only then drained and stopped, when one of these holds:

- ``no_sessions``: it never took a session (never live, never pinned, none counted);
- ``max_lifetime``: ``now - weight_zero_since >= max_lifetime``: its youngest session
  started no later than ``weight_zero_since``, so every pin to it has expired;
- ``sessions_idle``: no router counts a live session on it and none has seen a request
  pinned to it for ``idle_timeout`` (measured from ``last_pinned_at``, or, when no router
  ever saw one, from ``weight_zero_since``);
- ``rolled_back`` (decided by the planner, not here): the rollout undoes this broken
  version, so its sessions are re-pinned as soon as the other version can carry them.

``session_retirement`` answers for the session rules only and, when the version must
stay, says why in words for status and events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from skewless.core.plan import RolloutSpec, VersionView

SessionReason = Literal["sessions_idle", "max_lifetime", "no_sessions"]


@dataclass(frozen=True, kw_only=True)
class RetirementCheck:
    reason: SessionReason | None
    """Why it may retire now, or None while it must keep serving its sessions."""
    why: str
    """For status: why it may go, or what it waits for."""


def session_retirement(version: VersionView, spec: RolloutSpec, now: float) -> RetirementCheck:
    """May ``version`` (assumed at weight 0) be retired now by the session rules?"""
    name = version.version
    if version.last_pinned_at is None and version.live_since is None and version.sessions == 0:
        return RetirementCheck(reason="no_sessions", why=f"{name} never took a session")
    if version.weight_zero_since is not None:
        age = now - version.weight_zero_since
        if age >= spec.max_lifetime:
            return RetirementCheck(
                reason="max_lifetime",
                why=f"{name}: max session lifetime {spec.max_lifetime:g} s passed",
            )
    reference = version.last_pinned_at
    if reference is None:
        reference = version.weight_zero_since
    if reference is None:
        reference = version.live_since
    idle = None if reference is None else now - reference
    if version.sessions == 0 and idle is not None and idle >= spec.idle_timeout:
        return RetirementCheck(
            reason="sessions_idle",
            why=f"{name}: no pinned request for {idle:.0f} s "
            f"(idle timeout {spec.idle_timeout:g} s)",
        )
    parts = [f"{name} keeps serving its sessions"]
    if version.sessions:
        parts.append(f"{version.sessions} live")
    if version.last_pinned_at is not None:
        parts.append(f"last pinned {max(0.0, now - version.last_pinned_at):.0f} s ago")
    parts.append(f"idle timeout {spec.idle_timeout:g} s")
    if version.weight_zero_since is not None:
        left = spec.max_lifetime - (now - version.weight_zero_since)
        parts.append(f"max lifetime ends in {max(0.0, left):.0f} s")
    return RetirementCheck(reason=None, why=parts[0] + " (" + ", ".join(parts[1:]) + ")")
