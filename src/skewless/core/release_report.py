"""The bill of one release, as ``skewless demo`` and ``bench/release.py`` print it.

During a release the demo samples the fleet a few times a second (``FleetSample``: ready
instances, hosts used, instance processes and their memory) and the load generator
records what users saw (``FlowSummary`` over the release's window). ``release_report``
folds both into one ``ReleaseReport``: requests, failed requests, sessions, mixed
sessions, when and why the old version retired, how long the release took, the lowest
ready capacity against its floor, and what it cost in extra hosts, processes and memory.
Times are seconds on the load recorder's axis; ``retired_at`` and ``last_old_request_at``
are relative to the release's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from skewless.core.flow import FlowSummary


@dataclass(frozen=True, kw_only=True)
class FleetSample:
    at: float
    ready: int
    """Ready instances of the app in the route table, all versions."""
    ready_by_version: dict[str, int] = field(default_factory=dict)
    hosts: frozenset[str] = frozenset()
    """Hosts running at least one instance of the app."""
    processes: int = 0
    """Instance processes of the app alive on this machine."""
    rss_bytes: int = 0
    """Their resident memory, summed."""
    version_states: dict[str, str] = field(default_factory=dict)
    """Version -> ``live`` / ``draining`` / ``retired`` as the controller reports it."""


@dataclass(frozen=True, kw_only=True)
class ReleaseReport:
    version: str
    strategy: str
    pinned: bool
    """False for the control run (``session.pin = false``)."""
    old_version: str | None
    duration: float
    requests: int
    failed_requests: int
    errors_by_status: dict[str, int]
    sessions: int
    completed_sessions: int
    mixed_sessions: int
    rollout_state: str
    rollout_reason: str | None
    retired_at: float | None
    """Seconds after the release started when the old version was seen retired."""
    retire_reason: str | None
    """``sessions_idle``, ``max_lifetime`` ... as the controller said."""
    last_old_request_at: float | None
    """Seconds after the release started of the last request the old version answered."""
    min_ready: int
    floor: int
    extra_hosts: int
    peak_extra_processes: int
    peak_extra_memory_mb: float
    duration_floor: float | None = None
    """The least time its batches could take (``release_floor``), when known."""

    @property
    def idle_gap(self) -> float | None:
        """Seconds between the old version's last request and its retirement."""
        if self.retired_at is None or self.last_old_request_at is None:
            return None
        return self.retired_at - self.last_old_request_at

    def to_json(self) -> dict[str, Any]:
        gap = self.idle_gap
        return {
            "version": self.version,
            "strategy": self.strategy,
            "pinned": self.pinned,
            "old_version": self.old_version,
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "errors_by_status": dict(sorted(self.errors_by_status.items())),
            "sessions": self.sessions,
            "completed_sessions": self.completed_sessions,
            "mixed_sessions": self.mixed_sessions,
            "rollout_state": self.rollout_state,
            "rollout_reason": self.rollout_reason,
            "old_retired_after": _r(self.retired_at),
            "retire_reason": self.retire_reason,
            "old_last_request_after": _r(self.last_old_request_at),
            "old_idle_before_retire": _r(gap),
            "duration": _r(self.duration),
            "min_ready_instances": self.min_ready,
            "floor": self.floor,
            "extra_hosts": self.extra_hosts,
            "peak_extra_processes": self.peak_extra_processes,
            "peak_extra_memory_mb": round(self.peak_extra_memory_mb, 1),
            "duration_floor": _r(self.duration_floor),
            "duration_over_floor": (
                round(self.duration / self.duration_floor, 2) if self.duration_floor else None
            ),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def first_retired(samples: Sequence[FleetSample], version: str) -> float | None:
    """When ``version`` was first seen retired (or gone from the app) after being present."""
    seen = False
    for sample in samples:
        state = sample.version_states.get(version)
        if state is not None and state != "retired":
            seen = True
        elif seen or state == "retired":
            return sample.at
    return None


def release_report(
    *,
    version: str,
    strategy: str,
    pinned: bool,
    old_version: str | None,
    start: float,
    end: float,
    flow: FlowSummary,
    baseline: FleetSample,
    samples: Sequence[FleetSample],
    floor: int,
    rollout_state: str,
    rollout_reason: str | None = None,
    retire_reason: str | None = None,
    last_old_request_at: float | None = None,
    duration_floor: float | None = None,
) -> ReleaseReport:
    """Fold the samples taken during one release and its load window into its bill."""
    during = [s for s in samples if start <= s.at <= end] or [baseline]
    retired = first_retired([baseline, *during], old_version) if old_version else None
    base_mem = baseline.rss_bytes
    return ReleaseReport(
        version=version,
        strategy=strategy,
        pinned=pinned,
        old_version=old_version,
        duration=end - start,
        requests=flow.requests,
        failed_requests=flow.errors,
        errors_by_status=dict(flow.errors_by_status),
        sessions=flow.sessions_started,
        completed_sessions=flow.sessions_completed,
        mixed_sessions=flow.mixed_sessions,
        rollout_state=rollout_state,
        rollout_reason=rollout_reason,
        retired_at=None if retired is None else retired - start,
        retire_reason=retire_reason,
        last_old_request_at=None if last_old_request_at is None else last_old_request_at - start,
        min_ready=min(s.ready for s in during),
        floor=floor,
        extra_hosts=max(0, max(len(s.hosts - baseline.hosts) for s in during)),
        peak_extra_processes=max(0, max(s.processes for s in during) - baseline.processes),
        peak_extra_memory_mb=max(0, max(s.rss_bytes for s in during) - base_mem) / 2**20,
        duration_floor=duration_floor,
    )


@dataclass(frozen=True, kw_only=True)
class ActionTime:
    kind: str
    """The engine's action kind: ``start``, ``add``, ``drain``, ``stop`` ..."""
    instance: str
    at: float


def release_floor(actions: Sequence[ActionTime], *, batch: int) -> float | None:
    """The least time a release's batches could take: per batch of ``batch`` new instances
    (in the order they were started), the slowest bring-up (start -> added to the table:
    start, health and smoke checks) plus, for the old instances drained alongside, the
    slowest drain (drain -> stop); batches run one after another. None without a
    complete bring-up.

    The ratio of a release's duration to this floor is what waiting costs: capacity
    guards, and above all the old version's sessions going idle.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1 (got {batch})")
    first: dict[tuple[str, str], float] = {}
    for a in sorted(actions, key=lambda a: a.at):
        first.setdefault((a.kind, a.instance), a.at)
    started = sorted((t, i) for (k, i), t in first.items() if k == "start")
    ups = [first[("add", i)] - t for t, i in started if ("add", i) in first]
    drained = sorted((t, i) for (k, i), t in first.items() if k == "drain")
    downs = [first[("stop", i)] - t for t, i in drained if ("stop", i) in first]
    if not ups:
        return None
    total = 0.0
    for n in range(0, max(len(ups), len(downs)), batch):
        total += max(ups[n : n + batch], default=0.0) + max(downs[n : n + batch], default=0.0)
    return total
