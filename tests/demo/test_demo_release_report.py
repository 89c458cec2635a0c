"""A release's bill from samples and the load window (pure)."""

from __future__ import annotations

from skewless.core.flow import RequestRecord, SessionRecord, last_answered_by, summarize
from skewless.core.release_report import FleetSample, first_retired, release_report


def _s(
    at: float, ready: int, states: dict[str, str], procs: int, mb: int, hosts: str
) -> FleetSample:
    return FleetSample(
        at=at,
        ready=ready,
        hosts=frozenset(hosts.split()),
        processes=procs,
        rss_bytes=mb * 2**20,
        version_states=states,
    )


def test_release_report_folds_samples_and_window() -> None:
    base = _s(10.0, 4, {"v1": "live"}, 4, 160, "h1 h2 h3 h4")
    samples = [
        _s(10.5, 3, {"v1": "live", "v2": "live"}, 5, 200, "h1 h2 h3 h4"),
        _s(11.0, 4, {"v1": "draining", "v2": "live"}, 6, 250, "h1 h2 h3 h4 h5"),
        _s(14.0, 4, {"v1": "retired", "v2": "live"}, 4, 170, "h1 h2 h3 h4"),
        _s(30.0, 0, {}, 0, 0, ""),  # after the window: ignored
    ]
    requests = [
        RequestRecord(at=10.2, session=1, status=200, latency=0.01, version="v1"),
        RequestRecord(at=12.0, session=2, status=200, latency=0.01, version="v1"),
        RequestRecord(at=12.5, session=3, status=200, latency=0.01, version="v2"),
    ]
    sessions = [
        SessionRecord(id=1, user=1, started=10.2, ended=10.3, outcome="completed", versions=("v1",))
    ]
    flow = summarize(requests, sessions, start=10.0, end=20.0)
    report = release_report(
        version="v2",
        strategy="rolling",
        pinned=True,
        old_version="v1",
        start=10.0,
        end=20.0,
        flow=flow,
        baseline=base,
        samples=samples,
        floor=3,
        rollout_state="succeeded",
        retire_reason="sessions_idle",
        last_old_request_at=last_answered_by(requests, "v1"),
    )
    assert report.duration == 10.0
    assert report.requests == 3 and report.failed_requests == 0 and report.sessions == 1
    assert report.retired_at == 4.0
    assert report.last_old_request_at == 2.0 and report.idle_gap == 2.0
    assert report.min_ready == 3 and report.floor == 3
    assert report.extra_hosts == 1
    assert report.peak_extra_processes == 2
    assert report.peak_extra_memory_mb == 90.0
    body = report.to_json()
    assert body["old_retired_after"] == 4.0 and body["retire_reason"] == "sessions_idle"


def test_first_retired_counts_a_version_that_vanished() -> None:
    samples = [
        _s(1.0, 1, {"v1": "live"}, 1, 1, "h1"),
        _s(2.0, 1, {"v1": "draining"}, 1, 1, "h1"),
        _s(3.0, 1, {"v2": "live"}, 1, 1, "h1"),
    ]
    assert first_retired(samples, "v1") == 3.0
    assert first_retired(samples[:2], "v1") is None
    assert first_retired(samples, "v9") is None


def test_release_floor_sums_batches_of_bring_up_and_drain() -> None:
    from skewless.core.release_report import ActionTime, release_floor

    acts = [
        ActionTime(kind="start", instance="n1", at=0.0),
        ActionTime(kind="add", instance="n1", at=2.0),
        ActionTime(kind="drain", instance="o1", at=2.0),
        ActionTime(kind="stop", instance="o1", at=3.0),
        ActionTime(kind="start", instance="n2", at=3.0),
        ActionTime(kind="add", instance="n2", at=6.0),
        ActionTime(kind="drain", instance="o2", at=6.0),
        ActionTime(kind="stop", instance="o2", at=6.5),
        ActionTime(kind="start", instance="n1", at=9.0),  # repeated: the first counts
    ]
    assert release_floor(acts, batch=1) == (2.0 + 1.0) + (3.0 + 0.5)
    assert release_floor(acts, batch=2) == 3.0 + 1.0
    assert release_floor(acts[2:4], batch=1) is None
