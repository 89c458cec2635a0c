"""Canary analysis: is the new version worse than the old one, judging by router counters?

Theory of operation
-------------------
The engine gives, per version, the router counters accumulated since the current canary
step began (``VersionStats``: requests, errors, p99 latency). ``judge`` compares the new
version (the canary) with the old one (the baseline):

- fewer than ``min_requests`` requests on the canary: ``inconclusive`` (too little
  evidence either way: a low-traffic app is paced by ``step_interval`` instead);
- the canary's error rate exceeds the baseline's by more than ``max_error_rate_increase``
  (or, with no usable baseline, exceeds ``max_error_rate``): ``fail``;
- the canary's p99 exceeds ``baseline p99 * max_p99_ratio + p99_slack_ms``: ``fail``;
- otherwise ``pass``.

Errors are 5xx answers plus connect failures: both are what a user of that version sees
go wrong. The verdict carries a sentence naming the numbers, for events and status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

VerdictKind = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True, kw_only=True)
class VersionStats:
    """Router counters of one version over the analysis window (summed over routers)."""

    requests: int = 0
    errors: int = 0
    """5xx answers plus connect failures."""
    p99_ms: float | None = None
    """99th percentile latency (None: no latency data)."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0


@dataclass(frozen=True, kw_only=True)
class AnalysisSpec:
    min_requests: int = 100
    """Canary requests needed before any verdict other than ``inconclusive``."""
    max_error_rate_increase: float = 0.01
    """Allowed error-rate excess of the canary over the baseline (0.01 = 1 point)."""
    max_error_rate: float = 0.05
    """Error-rate limit of the canary when the baseline has too few requests."""
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 50.0
    """Latency allowance added to ``baseline p99 * max_p99_ratio`` (noise at low p99)."""


@dataclass(frozen=True, kw_only=True)
class Verdict:
    kind: VerdictKind
    reason: str


def judge(
    *,
    canary: str,
    canary_stats: VersionStats,
    baseline: str | None,
    baseline_stats: VersionStats | None,
    spec: AnalysisSpec,
) -> Verdict:
    """Compare ``canary`` against ``baseline`` (see the module docstring for the rules)."""
    if canary_stats.requests < spec.min_requests:
        return Verdict(
            kind="inconclusive",
            reason=f"{canary} has {canary_stats.requests} of the {spec.min_requests} "
            "requests the analysis needs",
        )
    rate = canary_stats.error_rate
    usable = (
        baseline is not None
        and baseline_stats is not None
        and baseline_stats.requests >= spec.min_requests
    )
    if usable and baseline_stats is not None:
        base_rate = baseline_stats.error_rate
        if rate - base_rate > spec.max_error_rate_increase:
            return Verdict(
                kind="fail",
                reason=f"{canary} error rate {rate:.1%} vs {baseline} {base_rate:.1%} "
                f"(allowed +{spec.max_error_rate_increase:.1%})",
            )
        if canary_stats.p99_ms is not None and baseline_stats.p99_ms is not None:
            limit = baseline_stats.p99_ms * spec.max_p99_ratio + spec.p99_slack_ms
            if canary_stats.p99_ms > limit:
                return Verdict(
                    kind="fail",
                    reason=f"{canary} p99 {canary_stats.p99_ms:.0f} ms vs {baseline} "
                    f"{baseline_stats.p99_ms:.0f} ms (limit {limit:.0f} ms)",
                )
        return Verdict(
            kind="pass",
            reason=f"{canary} error rate {rate:.1%} vs {baseline} {base_rate:.1%}",
        )
    if rate > spec.max_error_rate:
        return Verdict(
            kind="fail",
            reason=f"{canary} error rate {rate:.1%} above {spec.max_error_rate:.1%} "
            "(no baseline with enough requests)",
        )
    return Verdict(kind="pass", reason=f"{canary} error rate {rate:.1%} (no baseline)")


def p99_from_histogram(buckets: Mapping[str, int], *, cumulative: bool = True) -> float | None:
    """The 99th percentile (upper bucket bound, ms) of a router report's ``latency_ms``.

    Keys are ``le_<ms>`` and ``le_inf``; with ``cumulative`` each count includes the
    smaller buckets (Prometheus style), else counts are per bucket. ``le_inf`` as the
    answer is reported as the largest finite bound (the best lower estimate we have).
    """
    bounds: list[tuple[float, int]] = []
    for key, count in buckets.items():
        if not key.startswith("le_"):
            continue
        raw = key[3:]
        bound = float("inf") if raw == "inf" else float(raw)
        bounds.append((bound, count))
    if not bounds:
        return None
    bounds.sort()
    per_bucket: list[tuple[float, int]] = []
    previous = 0
    for bound, count in bounds:
        per_bucket.append((bound, count - previous if cumulative else count))
        previous = count if cumulative else previous
    total = sum(c for _, c in per_bucket)
    if total <= 0:
        return None
    target = 0.99 * total
    seen = 0
    finite = [b for b, _ in per_bucket if b != float("inf")]
    for bound, count in per_bucket:
        seen += count
        if seen >= target:
            if bound == float("inf"):
                return finite[-1] if finite else None
            return bound
    return finite[-1] if finite else None
