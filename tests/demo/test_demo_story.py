"""`skewless demo` as a test (issue 5): a real local fleet (`skewless up`: controller,
router, 4 agents), the wizard v1, simulated users, v2 rolling then v3 side-by-side, and
the control run without pins. Small numbers; one fleet for the whole story."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from skewless.demo.story import Story, StoryOptions, StoryResult, descendants


def _free() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_releases_under_load_have_no_failures_and_no_mixed_sessions_unless_unpinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    opts = StoryOptions(
        hosts=4,
        users=6,
        think=0.1,
        idle_timeout=4.0,
        warmup=1.0,
        release_timeout=90.0,
        http=_free(),
        api=_free(),
        state=tmp_path / "state",
        compare=True,
    )
    story = Story(opts, lambda line: None, lambda view: None)

    async def run() -> StoryResult:
        try:
            return await story.run()
        finally:
            if story.api is not None:
                await story.api.close()

    try:
        result = asyncio.run(run())
    finally:
        up_pid = story.up.pid if story.up is not None else None
        if story.up is not None:
            story.up.stop()
    assert up_pid is not None and descendants(up_pid) == []

    rolling, side = result.releases
    assert (rolling.version, rolling.strategy) == ("v2", "rolling")
    assert (side.version, side.strategy) == ("v3", "side-by-side")
    for r in result.releases:
        assert r.rollout_state == "succeeded", r
        assert r.requests > 0 and r.sessions > 0
        assert r.failed_requests == 0, r.errors_by_status
        assert r.mixed_sessions == 0
        # Retired only after its sessions went idle: no request reached the old version
        # for at least the idle timeout before it was retired.
        assert r.retire_reason == "sessions_idle"
        assert r.idle_gap is not None and r.idle_gap >= opts.idle_timeout
        assert r.min_ready >= r.floor
        assert r.extra_hosts == 0
    assert rolling.peak_extra_processes == 0  # rolling replaces in place
    assert side.peak_extra_processes > 0  # side-by-side pays with processes, not hosts
    assert result.ok

    # The control run: the same kinds of release with session.pin = false.
    assert [(r.version, r.pinned) for r in result.control] == [("v4", False), ("v5", False)]
    assert sum(r.mixed_sessions for r in result.control) > 0
    statuses = {s for r in result.control for s in r.errors_by_status}
    assert statuses and statuses <= {"409", "422"}
