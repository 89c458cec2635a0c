"""Accounting of a session-flow load test: what the simulated users saw, summed up.

The load generator (``skewless.demo.loadtest``) records one ``RequestRecord`` per HTTP
exchange and one ``SessionRecord`` per visitor's walk through the flow; ``summarize``
turns them into the figures the issue asks for, over the whole run or over a window
(the demo reports one window per release). A session is *mixed* when its responses came
from more than one version: exactly the skew skewless exists to prevent.

Sessions are counted in a window when they overlap it; requests when they started in it.
Percentiles are nearest-rank (no interpolation: p99 is a latency some request really had).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["completed", "failed", "abandoned", "running"]
"""completed: reached the end; failed: got an error; abandoned: the run stopped first."""


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    at: float
    """When the request started, seconds since the run began."""
    session: int
    status: int
    """HTTP status, or 0 when no response came (see ``error``)."""
    latency: float
    """Seconds until the response headers and body were read."""
    version: str | None = None
    """The version that answered (``X-App-Version``, else ``Skewless-Version``)."""
    error: str | None = None
    """Transport failure kind (``connect_error``, ``timeout``, ...) when ``status`` is 0."""
    repinned: bool = False
    """The router said it re-pinned the session (``Skewless-Repinned``)."""

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 400


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    id: int
    user: int
    started: float
    ended: float | None
    """None while the session is still running."""
    outcome: Outcome
    versions: tuple[str, ...] = ()
    """Distinct versions that answered it, in the order first seen."""

    @property
    def mixed(self) -> bool:
        return len(self.versions) > 1


@dataclass(frozen=True, kw_only=True)
class TimelineBucket:
    second: int
    """Whole seconds since the run began."""
    versions: dict[str, int]
    """Requests answered per version in this second."""
    errors: int = 0


@dataclass(frozen=True, kw_only=True)
class FlowSummary:
    duration: float
    sessions_started: int
    sessions_completed: int
    sessions_failed: int
    sessions_abandoned: int
    mixed_sessions: int
    requests: int
    errors: int
    errors_by_status: dict[str, int]
    """Failed requests by HTTP status (``"409"``) or transport error kind."""
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    versions: dict[str, int]
    """Requests answered per version."""
    repinned: int = 0
    timeline: tuple[TimelineBucket, ...] = ()
    mixed_examples: tuple[tuple[str, ...], ...] = field(default=())
    """A few mixed sessions' version sequences, for the report."""

    @property
    def ok(self) -> bool:
        """No failed request and no session that saw two versions."""
        return self.errors == 0 and self.mixed_sessions == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "duration": round(self.duration, 3),
            "sessions_started": self.sessions_started,
            "sessions_completed": self.sessions_completed,
            "sessions_failed": self.sessions_failed,
            "sessions_abandoned": self.sessions_abandoned,
            "mixed_sessions": self.mixed_sessions,
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_status": dict(sorted(self.errors_by_status.items())),
            "latency_ms": {
                "p50": _round(self.latency_p50_ms),
                "p99": _round(self.latency_p99_ms),
                "max": _round(self.latency_max_ms),
            },
            "versions": dict(sorted(self.versions.items())),
            "repinned": self.repinned,
            "timeline": [
                {
                    "second": b.second,
                    "versions": dict(sorted(b.versions.items())),
                    "errors": b.errors,
                }
                for b in self.timeline
            ],
            "mixed_examples": [list(v) for v in self.mixed_examples],
            "ok": self.ok,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile q must be in (0, 100] (got {q})")
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def summarize(
    requests: Iterable[RequestRecord],
    sessions: Iterable[SessionRecord],
    *,
    start: float = 0.0,
    end: float = math.inf,
    duration: float | None = None,
    examples: int = 5,
) -> FlowSummary:
    """Sum up the records that fall in ``[start, end)`` (seconds since the run began)."""
    reqs = [r for r in requests if start <= r.at < end]
    sess = [s for s in sessions if s.started < end and (s.ended is None or s.ended >= start)]
    errors = Counter(
        str(r.status) if r.status else (r.error or "transport") for r in reqs if r.failed
    )
    latencies = [r.latency * 1000 for r in reqs if r.status]
    buckets: dict[int, Counter[str]] = {}
    bucket_errors: Counter[int] = Counter()
    for r in reqs:
        second = int(r.at)
        buckets.setdefault(second, Counter())
        if r.version is not None:
            buckets[second][r.version] += 1
        if r.failed:
            bucket_errors[second] += 1
    outcomes = Counter(s.outcome for s in sess)
    mixed = [s for s in sess if s.mixed]
    if duration is None:
        last = max((r.at + r.latency for r in reqs), default=start)
        duration = (end if end != math.inf else last) - start
    return FlowSummary(
        duration=max(duration, 0.0),
        sessions_started=len(sess),
        sessions_completed=outcomes["completed"],
        sessions_failed=outcomes["failed"],
        sessions_abandoned=outcomes["abandoned"] + outcomes["running"],
        mixed_sessions=len(mixed),
        requests=len(reqs),
        errors=sum(errors.values()),
        errors_by_status=dict(errors),
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
        latency_max_ms=max(latencies, default=None),
        versions=dict(Counter(r.version for r in reqs if r.version is not None)),
        repinned=sum(1 for r in reqs if r.repinned),
        timeline=tuple(
            TimelineBucket(second=s, versions=dict(buckets[s]), errors=bucket_errors[s])
            for s in sorted(buckets)
        ),
        mixed_examples=tuple(s.versions for s in mixed[:examples]),
    )


def last_answered_by(requests: Iterable[RequestRecord], version: str) -> float | None:
    """When (seconds since the run began) ``version`` last answered a request, or None."""
    return max((r.at for r in requests if r.version == version), default=None)
