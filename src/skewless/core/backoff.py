"""Restart backoff and the crash-loop verdict for supervised instances.

Theory of operation: the supervisor keeps the clock readings of an instance's recent
crashes. On each crash it asks ``on_crash`` what to do. Only crashes inside the sliding
``window`` count, so an instance that ran well for a while starts again from the short
delay; the delay doubles with each recent crash up to ``cap``; more than ``max_restarts``
recent crashes is a crash loop, reported as ``failed`` instead of being retried forever
(hiding a crash loop behind endless restarts is what operators hate most).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BackoffPolicy:
    base: float = 0.5
    """Delay before the first restart (seconds)."""
    factor: float = 2.0
    cap: float = 30.0
    """Longest delay between two restarts."""
    window: float = 120.0
    """Crashes older than this (seconds) are forgotten."""
    max_restarts: int = 5
    """More recent crashes than this is a crash loop."""

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < self.base or self.factor < 1:
            raise ValueError("backoff needs 0 <= base <= cap and factor >= 1")
        if self.window <= 0 or self.max_restarts < 0:
            raise ValueError("backoff needs window > 0 and max_restarts >= 0")


@dataclass(frozen=True, kw_only=True)
class Restart:
    at: float
    """Clock reading at which to start the instance again."""
    delay: float
    crashes: tuple[float, ...]
    """Recent crash times to keep for the next verdict."""


@dataclass(frozen=True, kw_only=True)
class GiveUp:
    reason: str
    crashes: tuple[float, ...]


def on_crash(policy: BackoffPolicy, crashes: tuple[float, ...], now: float) -> Restart | GiveUp:
    """Verdict for an instance that just crashed at ``now`` after earlier ``crashes``."""
    recent = (*(t for t in crashes if now - t < policy.window), now)
    if len(recent) > policy.max_restarts:
        return GiveUp(
            reason=(
                f"crash loop: {len(recent)} crashes within {policy.window:g}s "
                f"(more than {policy.max_restarts})"
            ),
            crashes=recent,
        )
    delay = min(policy.cap, policy.base * policy.factor ** (len(recent) - 1))
    return Restart(at=now + delay, delay=delay, crashes=recent)
