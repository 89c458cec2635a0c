"""Done means (issue 4): a rolling and a side-by-side release of 4 instances under
concurrent multi-request sessions, with 0 failed requests, 0 sessions seeing two
versions, and the old version retired only after its sessions went idle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .e2e_fleet import Fleet, running_fleet, wait_for
from .e2e_sessions import SessionLoad
from .e2e_watch import StatusWatch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc"),
]

IDLE = 3.0
"""The app's session idle timeout: short, so that the test is fast."""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path, hosts=4, slots=2) as f:
        yield f


def release_under_load(fleet: Fleet, strategy: str) -> None:
    common = ["--instances", "4", "--session-idle-timeout", str(IDLE)]
    first = fleet.deploy("shop", "v1", *common)
    assert first.returncode == 0, first.stdout + first.stderr
    with SessionLoad(fleet.http, users=6, requests_per_session=8, think=0.15) as load:
        wait_for("sessions on v1", lambda: load.requests() > 30, timeout=30)
        with StatusWatch(fleet.api, "shop") as watch:
            done = fleet.deploy("shop", "v2", *common, "--strategy", strategy, "--batch", "1")
            assert done.returncode == 0, done.stdout + done.stderr
            wait_for("new sessions on v2", lambda: fleet.serves("v2"), timeout=30)
            # Sessions that began on v1 finish their flow on v1; then stop the load.
            wait_for("v1's sessions to end", lambda: load.open_sessions_on("v1") == 0, 30)
            load.stop()
            last_v1 = load.last_sent_to("v1")
            wait_for(
                "v1 to be retired",
                lambda: watch.gone_or("v1", "retired") is not None,
                timeout=60,
            )
    assert load.failures() == [], load.failures()[:5]
    assert [s.versions for s in load.mixed()] == []
    assert load.repinned() == []  # nothing was rolled back: no re-pin either
    assert load.problems == []
    assert load.versions_seen() == {"v1", "v2"}
    # The release happened *under* sessions: some session pinned to v1 was still being
    # served by v1 after another session had been answered by v2.
    first_v2 = load.first_sent_to("v2")
    assert first_v2 is not None
    timeline = [
        (s.id, [(round(a.sent - first_v2, 2), a.version) for a in s.answers])
        for s in load.snapshot()
        if s.answers and abs(s.answers[0].sent - first_v2) < 3
    ]
    assert any(
        s.first_version == "v1" and any(a.sent > first_v2 for a in s.answers)
        for s in load.snapshot()
    ), timeline
    # Retired only after no pinned request for the idle timeout.
    retired_at = watch.gone_or("v1", "retired")
    assert retired_at is not None
    assert retired_at >= last_v1 + IDLE, (retired_at - last_v1, IDLE)
    status = fleet.status("shop")
    (v2,) = [v for v in status["versions"] if v["version"] == "v2"]
    assert v2["state"] == "live" and v2["weight"] == 1.0
    assert [i["state"] for i in v2["instances"]] == ["ready"] * 4
    assert status["rollout"]["state"] == "succeeded"
    assert status["rollout"]["strategy"] == strategy


def test_rolling_release_under_sessions(fleet: Fleet) -> None:
    release_under_load(fleet, "rolling")


def test_side_by_side_release_under_sessions(fleet: Fleet) -> None:
    with StatusWatch(fleet.api, "shop") as watch:
        release_under_load(fleet, "side-by-side")
    # Side by side: once v1 was fully up, it kept all 4 instances while it still took
    # new sessions (no host left the pool).
    ready = watch.ready_while_weighted("v1")
    assert 4 in ready
    assert min(ready[ready.index(4) :]) == 4, ready
