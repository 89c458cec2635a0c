"""Canary analysis verdicts and rollout spec checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from skewless.core.analysis import AnalysisSpec, VersionStats, judge, p99_from_histogram
from skewless.core.errors import ConfigError
from skewless.core.plan import RolloutSpec
from skewless.core.rollout_checks import check_rollout_spec

SPEC = AnalysisSpec(min_requests=100)


@pytest.mark.parametrize(
    ("canary", "baseline", "kind"),
    [
        (VersionStats(requests=50, errors=50), VersionStats(requests=1000), "inconclusive"),
        (VersionStats(requests=200, errors=1), VersionStats(requests=1000, errors=5), "pass"),
        (VersionStats(requests=200, errors=10), VersionStats(requests=1000, errors=5), "fail"),
        (VersionStats(requests=200, errors=6), VersionStats(requests=1000, errors=20), "pass"),
        (
            VersionStats(requests=200, p99_ms=400.0),
            VersionStats(requests=1000, p99_ms=100.0),
            "fail",
        ),
        (
            VersionStats(requests=200, p99_ms=190.0),
            VersionStats(requests=1000, p99_ms=100.0),
            "pass",
        ),
        # Baseline too thin: only the absolute error-rate limit applies.
        (VersionStats(requests=200, errors=20), VersionStats(requests=10), "fail"),
        (VersionStats(requests=200, errors=2), VersionStats(requests=10), "pass"),
    ],
)
def test_planner_analysis_verdicts(canary: VersionStats, baseline: VersionStats, kind: str) -> None:
    verdict = judge(
        canary="v2", canary_stats=canary, baseline="v1", baseline_stats=baseline, spec=SPEC
    )
    assert verdict.kind == kind
    assert "v2" in verdict.reason


def test_planner_analysis_reason_names_the_numbers() -> None:
    verdict = judge(
        canary="v2",
        canary_stats=VersionStats(requests=200, p99_ms=400.0),
        baseline="v1",
        baseline_stats=VersionStats(requests=1000, p99_ms=100.0),
        spec=SPEC,
    )
    assert verdict.reason == "v2 p99 400 ms vs v1 100 ms (limit 200 ms)"


@pytest.mark.parametrize(
    ("buckets", "cumulative", "p99"),
    [
        ({"le_5": 90, "le_10": 99, "le_50": 100, "le_inf": 100}, True, 10.0),
        ({"le_5": 90, "le_10": 9, "le_50": 1, "le_inf": 0}, False, 10.0),
        ({"le_5": 0, "le_inf": 10}, True, 5.0),
        ({"le_5": 0, "le_inf": 0}, True, None),
        ({}, True, None),
    ],
)
def test_planner_analysis_p99_from_router_histogram(
    buckets: dict[str, int], cumulative: bool, p99: float | None
) -> None:
    assert p99_from_histogram(buckets, cumulative=cumulative) == p99


BASE = RolloutSpec(app="shop", to_version="v2", strategy="rolling", instances=2)


def test_planner_spec_check_accepts_defaults() -> None:
    check_rollout_spec(BASE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"instances": 0}, "instances must be at least 1"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"steps": (0.5, 0.1, 1.0)}, "steps must rise strictly"),
        ({"steps": (0.1, 0.5)}, "steps must end at 1.0"),
        ({"headroom": 0.9}, "headroom must be at least 1.0"),
        ({"step_interval": 600.0}, "step_interval must be 0 or more and below progress_deadline"),
        ({"max_lifetime": 10.0}, "session.max_lifetime must be at least session.idle_timeout"),
        ({"strategy": "blue"}, "strategy must be one of rolling, side-by-side, surge"),
    ],
)
def test_planner_spec_check_names_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_rollout_spec(replace(BASE, **change))  # type: ignore[arg-type]
