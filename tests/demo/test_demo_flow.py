"""The load test's accounting (pure): percentiles, mixed sessions, windows, timeline."""

from __future__ import annotations

import pytest

from skewless.core.flow import RequestRecord, SessionRecord, percentile, summarize


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 1) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="percentile q"):
        percentile(values, 0)


def _req(at: float, session: int, status: int = 200, version: str | None = "v1") -> RequestRecord:
    return RequestRecord(at=at, session=session, status=status, latency=0.01, version=version)


def test_summary_counts_mixed_sessions_and_errors_by_status() -> None:
    requests = [
        _req(0.1, 1),
        _req(0.2, 1),
        _req(0.3, 2),
        _req(1.4, 2, version="v2"),
        _req(1.5, 2, status=422, version="v2"),
        RequestRecord(at=2.2, session=3, status=0, latency=1.0, error="connect_error"),
    ]
    sessions = [
        SessionRecord(id=1, user=1, started=0.1, ended=0.3, outcome="completed", versions=("v1",)),
        SessionRecord(
            id=2, user=2, started=0.3, ended=1.6, outcome="failed", versions=("v1", "v2")
        ),
        SessionRecord(id=3, user=1, started=2.2, ended=None, outcome="running"),
    ]
    s = summarize(requests, sessions)
    assert (s.requests, s.errors) == (6, 2)
    assert s.errors_by_status == {"422": 1, "connect_error": 1}
    assert (s.sessions_started, s.sessions_completed, s.sessions_failed) == (3, 1, 1)
    assert s.sessions_abandoned == 1
    assert s.mixed_sessions == 1 and s.mixed_examples == (("v1", "v2"),)
    assert s.versions == {"v1": 3, "v2": 2}
    assert [(b.second, b.versions, b.errors) for b in s.timeline] == [
        (0, {"v1": 3}, 0),
        (1, {"v2": 2}, 1),
        (2, {}, 1),
    ]
    assert not s.ok
    assert s.to_json()["errors_by_status"] == {"422": 1, "connect_error": 1}


def test_a_window_keeps_requests_started_in_it_and_sessions_overlapping_it() -> None:
    requests = [_req(0.5, 1), _req(1.5, 1), _req(2.5, 2)]
    sessions = [
        SessionRecord(id=1, user=1, started=0.5, ended=1.6, outcome="completed", versions=("v1",)),
        SessionRecord(id=2, user=1, started=2.5, ended=2.6, outcome="completed", versions=("v1",)),
    ]
    s = summarize(requests, sessions, start=1.0, end=2.0)
    assert s.requests == 1 and s.sessions_started == 1
    assert s.duration == 1.0
    assert s.ok
