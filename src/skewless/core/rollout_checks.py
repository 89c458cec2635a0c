"""Checks of a ``RolloutSpec`` before a rollout starts: the planner trusts what passes.

The controller calls ``check_rollout_spec`` when it accepts a deploy; each error names
the field and the fix, and nothing is changed (invariant 6).
"""

from __future__ import annotations

from skewless.core.errors import ConfigError
from skewless.core.model import STRATEGIES
from skewless.core.plan import RolloutSpec


def check_rollout_spec(spec: RolloutSpec) -> None:
    """Raise ``ConfigError`` naming the first field of ``spec`` that the planner cannot use."""
    if spec.strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, not {spec.strategy!r}")
    if spec.instances < 1:
        raise ConfigError("instances must be at least 1")
    if spec.batch < 1:
        raise ConfigError("batch must be at least 1")
    if spec.max_unavailable < 0:
        raise ConfigError("max_unavailable must be 0 or more")
    if spec.max_surge < 0:
        raise ConfigError("max_surge must be 0 or more")
    if spec.headroom < 1.0:
        raise ConfigError("headroom must be at least 1.0 (1.3 keeps 30% spare capacity)")
    if not spec.steps:
        raise ConfigError("steps must not be empty: give canary weights ending at 1.0")
    previous = 0.0
    for step in spec.steps:
        if not previous < step <= 1.0:
            raise ConfigError(
                "steps must rise strictly within (0, 1], e.g. 0.01,0.1,0.5,1.0; "
                f"got {','.join(f'{s:g}' for s in spec.steps)}"
            )
        previous = step
    if spec.steps[-1] != 1.0:
        raise ConfigError("steps must end at 1.0 (the new version takes every new session)")
    if spec.progress_deadline <= 0:
        raise ConfigError("progress_deadline must be more than 0 seconds")
    if spec.step_interval < 0 or spec.step_interval >= spec.progress_deadline:
        raise ConfigError(
            "step_interval must be 0 or more and below progress_deadline "
            f"({spec.progress_deadline:g} s), or every canary step would fail the rollout"
        )
    if spec.idle_timeout <= 0:
        raise ConfigError("session.idle_timeout must be more than 0 seconds")
    if spec.max_lifetime < spec.idle_timeout:
        raise ConfigError("session.max_lifetime must be at least session.idle_timeout")
    if spec.drain_timeout is not None and spec.drain_timeout <= 0:
        raise ConfigError("drain_timeout must be more than 0 seconds")
