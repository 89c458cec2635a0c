"""Capacity arithmetic of the planner: which instances serve, which hold a slot, and how
many ready instances a version's live load needs (its floor).

A version's floor is ``ceil(load * headroom / capacity)`` ready instances, and at least
one while it takes new sessions (weight > 0), has live sessions, or may still have pinned
sessions that have not gone idle (``keep_one``). The floor is what the capacity guard
(invariant 4) protects: the planner never drains a version below it.
"""

from __future__ import annotations

import math

from skewless.core.model import InstanceState
from skewless.core.plan import InstanceView

EPS = 1e-9


def is_serving(instance: InstanceView) -> bool:
    """Ready, in the route table for new work, and running the version it was asked for."""
    return (
        instance.table == "ready"
        and instance.state is InstanceState.READY
        and instance.desired == "running"
        and instance.running_version in (None, instance.version)
    )


def occupies_slot(instance: InstanceView) -> bool:
    """Whether the instance holds one of its host's slots (its process may still run)."""
    gone = instance.state in (InstanceState.STOPPED, InstanceState.FAILED)
    return not (instance.desired == "stopped" and gone)


def is_leaving(instance: InstanceView) -> bool:
    """Taken out of service by the planner (draining or asked to stop), not yet gone."""
    return occupies_slot(instance) and (
        instance.desired != "running" or instance.table == "draining"
    )


def instances_needed(load: float, capacity: float, headroom: float) -> int:
    """Ready instances that carry ``load`` with ``headroom`` (0 for no load)."""
    if load <= EPS:
        return 0
    per_instance = max(capacity, EPS)
    return max(0, math.ceil(load * headroom / per_instance - EPS))


def floor_of(*, load: float, capacity: float, headroom: float, keep_one: bool) -> int:
    """The capacity floor of a version (see the module docstring)."""
    needed = instances_needed(load, capacity, headroom)
    return max(needed, 1) if keep_one else needed
