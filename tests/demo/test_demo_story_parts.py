"""The demo driver's parts that need no fleet: sampling a status, reading retirement
events, finding instance processes, validating options."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import pytest

from skewless.demo import story

STATUS = {
    "app": "wizard",
    "versions": [
        {
            "version": "v1",
            "state": "draining",
            "weight": 0.0,
            "instances": [
                {"id": "h1/wizard/v1/0", "host": "h1", "state": "ready", "table": "ready"},
                {"id": "h5/wizard/v1/0", "host": "h5", "state": "ready", "table": "draining"},
                {"id": "h2/wizard/v1/0", "host": "h2", "state": "draining"},
                {"id": "h3/wizard/v1/0", "host": "h3", "state": "stopped"},
            ],
        },
        {
            "version": "v2",
            "state": "live",
            "weight": 1.0,
            "instances": [
                {"id": "h3/wizard/v2/0", "host": "h3", "state": "ready"},
                {"id": "h4/wizard/v2/0", "host": "h4", "state": "starting"},
            ],
        },
        {"version": "v0", "state": "retired", "weight": 0.0, "instances": []},
    ],
    "rollout": {"state": "progressing", "strategy": "rolling", "to": "v2", "reason": None},
}


def test_sample_counts_ready_instances_and_hosts_in_use() -> None:
    s = story.sample(STATUS, at=1.5, root=None)
    assert s.ready == 2 and s.ready_by_version == {"v1": 1, "v2": 1, "v0": 0}
    assert s.hosts == frozenset({"h1", "h2", "h3", "h4", "h5"})
    assert s.version_states == {"v1": "draining", "v2": "live", "v0": "retired"}
    assert s.processes == 0 and s.at == 1.5


@pytest.mark.parametrize(
    "event,reason",
    [
        (
            {
                "kind": "action",
                "action": {"kind": "retire", "version": "v1", "reason": "max_lifetime"},
            },
            "max_lifetime",
        ),
        ({"kind": "retire", "version": "v1", "reason": "sessions_idle"}, "sessions_idle"),
        ({"kind": "version_retired", "message": "v1 retired: max lifetime passed"}, "max_lifetime"),
        ({"kind": "retire", "message": "retired v1 (no_sessions)"}, "no_sessions"),
        ({"kind": "retire", "message": "retired v2 (sessions_idle)"}, None),
        ({"kind": "start", "message": "v1 started"}, None),
    ],
)
def test_retire_reason_from_events(event: dict[str, str], reason: str | None) -> None:
    assert story._retire_reason([event], "v1") == reason


def test_wizard_processes_are_found_below_a_root_with_their_version() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "skewless.demo.wizard",
            "--version",
            "v7",
        ],
        start_new_session=True,
    )
    try:
        found = story.wizard_processes(os.getpid())
        assert (child.pid, "v7") in found
        assert child.pid in story.descendants(os.getpid())
        assert story._rss_bytes(child.pid) > 0
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _args(**over: object) -> argparse.Namespace:
    base = {
        "users": 20,
        "hosts": 4,
        "think": 0.3,
        "idle_timeout": 5.0,
        "http": "127.0.0.1:1",
        "api": "127.0.0.1:2",
        "state": "x",
        "compare": False,
        "release_timeout": 10.0,
    }
    return argparse.Namespace(**{**base, **over})


def test_options_name_the_bad_flag() -> None:
    assert story.options_from_args(_args()).hosts == 4
    with pytest.raises(story.DemoError, match="--users must be at least 1"):
        story.options_from_args(_args(users=0))
    with pytest.raises(story.DemoError, match="--hosts must be at least 2"):
        story.options_from_args(_args(hosts=1))
    with pytest.raises(story.DemoError, match="--idle-timeout must be at least 3 "):
        story.options_from_args(_args(idle_timeout=2, think=0.1))
    with pytest.raises(story.DemoError, match=r"--idle-timeout must be at least 5\.5 .* --think 2"):
        story.options_from_args(_args(idle_timeout=5, think=2.0))
    assert story.options_from_args(_args(idle_timeout=5.5, think=2.0)).idle_timeout == 5.5


def test_result_is_ok_only_with_zero_failures_and_mixed_sessions() -> None:
    from skewless.core.flow import summarize
    from skewless.core.release_report import FleetSample, release_report

    def report(mixed_state: str) -> object:
        return release_report(
            version="v2",
            strategy="rolling",
            pinned=True,
            old_version="v1",
            start=0,
            end=1,
            flow=summarize([], []),
            baseline=FleetSample(at=0, ready=4),
            samples=[],
            floor=3,
            rollout_state=mixed_state,
        )

    good = story.StoryResult(releases=[report("succeeded")])
    assert good.ok and good.to_json()["releases"][0]["version"] == "v2"
    assert not story.StoryResult(releases=[report("failed")]).ok
    assert not story.StoryResult().ok


def test_action_times_keep_instance_actions_of_the_engine() -> None:
    events = [
        {"id": 1, "time": 10.0, "kind": "action", "action": {"kind": "start", "instance_id": "a"}},
        {"id": 2, "time": 11.0, "kind": "action", "action": {"kind": "weights", "step": 1}},
        {"id": 3, "time": 12.5, "kind": "waiting", "message": "v1 needs 2"},
    ]
    times = story.action_times(events)
    assert [(t.kind, t.instance, t.at) for t in times] == [("start", "a", 10.0)]
