"""Done means (issue 4), the operator's side: abort and rollback; kill -9 of the
controller mid-rollout resumes without doing anything twice; the capacity guard blocks
a step while load says so and lets it go when the load is gone."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .e2e_fleet import Fleet, running_fleet, wait_for
from .e2e_sessions import SessionLoad

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc"),
]

IDLE = 3.0
COMMON = ["--instances", "4", "--session-idle-timeout", str(IDLE)]


def fleet_fixture(tmp_path: Path, *, slots: int) -> Iterator[Fleet]:
    with running_fleet(tmp_path, hosts=4, slots=slots) as f:
        yield f


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(tmp_path, slots=2)


@pytest.fixture
def tight_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """One slot per host: a rolling release must free a slot before it can start one."""
    yield from fleet_fixture(tmp_path, slots=1)


def rollout(fleet: Fleet, app: str) -> dict[str, object]:
    return dict(fleet.status(app).get("rollout") or {})


def running_instances(fleet: Fleet, version: str) -> int:
    return sum(
        1
        for cmd in fleet.leftovers().values()
        if "e2e_tinyapp.py" in cmd and f"--version {version} " in cmd
    )


def test_abort_then_rollback(fleet: Fleet) -> None:
    assert fleet.deploy("shop", "v1", *COMMON).returncode == 0
    with SessionLoad(fleet.http, users=4, requests_per_session=6, think=0.1) as load:
        # v2 starts slowly, so that the abort lands mid-rollout.
        cmd = fleet.tinyapp("v2", "--start-delay", "2")
        started = fleet.cli(
            "deploy", "shop", "v2", "--command", cmd, "--health", "/healthz", *COMMON,
            "--strategy", "side-by-side",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        wait_for(
            "the v2 rollout to progress",
            lambda: rollout(fleet, "shop").get("state") == "progressing",
            30,
        )
        aborted = fleet.cli("abort", "shop")
        assert aborted.returncode == 0, aborted.stderr
        wait_for(
            "the rollout to be aborted",
            lambda: rollout(fleet, "shop").get("state") == "aborted",
            30,
        )
        # New sessions go back to v1, every one of them.
        wait_for("new sessions on v1", lambda: fleet.serves("v1"), timeout=30)
        assert all(fleet.serves("v1") for _ in range(10))
        weights = {v["version"]: v["weight"] for v in fleet.status("shop")["versions"]}
        assert weights["v1"] == 1.0 and weights.get("v2", 0.0) == 0.0

        # Releases are immutable: the next try is a new version, v3. Release it, then
        # roll it back.
        done = fleet.deploy("shop", "v3", *COMMON, "--strategy", "side-by-side")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for("new sessions on v3", lambda: fleet.serves("v3"), timeout=30)
        pinned = httpx.Client(base_url=fleet.http, timeout=5)
        assert pinned.get("/").headers["x-app-version"] == "v3"
        back = fleet.cli("rollback", "shop")
        assert back.returncode == 0, back.stderr

        # The pinned session keeps going (within its idle timeout) and is moved to v1 by
        # the router once v3 is rolled back, with a header saying so.
        def moved() -> httpx.Response | None:
            r = pinned.get("/")
            assert r.status_code == 200
            return r if r.headers["x-app-version"] != "v3" else None

        try:
            switch = wait_for("the pinned session to leave v3", moved, timeout=60, every=0.5)
        finally:
            pinned.close()
        why = f"{dict(switch.headers)}\n{fleet.cli('events', 'shop').stdout[-3000:]}"
        assert switch.headers["x-app-version"] == "v1", why
        assert switch.headers.get("skewless-repinned") == "v3 -> v1", why
        wait_for(
            "the rollback to end",
            lambda: (
                rollout(fleet, "shop").get("to") == "v1"
                and rollout(fleet, "shop").get("state") in ("succeeded", "rolled_back")
            ),
            timeout=60,
        )
        wait_for("new sessions on v1", lambda: fleet.serves("v1"), timeout=30)
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    # Sessions switch version only when re-pinned away from the rolled-back v3, and told.
    assert [s.unexplained_switches for s in load.mixed()] == []
    assert {v for s in load.repinned() for v in s.versions} <= {"v1", "v3"}
    wait_for(
        "v3 to be retired",
        lambda: fleet.version_state("shop", "v3") in (None, "retired"),
        timeout=60,
    )


def test_controller_killed_mid_rollout_resumes(fleet: Fleet) -> None:
    assert fleet.deploy("shop", "v1", *COMMON).returncode == 0
    with SessionLoad(fleet.http, users=4, requests_per_session=6, think=0.1) as load:
        # `deploy --wait` follows the rollout through the controller's death and restart.
        cmd = fleet.tinyapp("v2", "--start-delay", "1")
        follower = subprocess.Popen(
            [sys.executable, "-m", "skewless", "deploy", "shop", "v2", "--command", cmd,
             "--health", "/healthz", *COMMON, "--strategy", "rolling", "--batch", "1",
             "--wait"],
            env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(
                "a first v2 instance to be ready",
                lambda: fleet.ready_instances("shop", "v2") >= 1,
                timeout=60,
            )
            assert rollout(fleet, "shop").get("state") == "progressing"  # mid-rollout
            controller = fleet.parts()["controller"]["pid"]
            os.kill(controller, signal.SIGKILL)
            wait_for(
                "up to restart the controller",
                lambda: fleet.parts()["controller"]["restarts"] == 1,
                timeout=30,
            )
            out, err = follower.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(follower.pid, signal.SIGKILL)
            follower.wait(timeout=10)
        assert follower.returncode == 0, out + err
        assert "shop v2: rollout succeeded" in out
        r = rollout(fleet, "shop")
        assert (r.get("state"), r.get("to")) == ("succeeded", "v2")
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    assert [s.versions for s in load.mixed()] == []
    status = fleet.status("shop")
    (v2,) = [v for v in status["versions"] if v["version"] == "v2"]
    ids = [i["id"] for i in v2["instances"]]
    assert len(ids) == 4 and len(set(ids)) == 4
    # No action taken twice: exactly 4 v2 processes run on the machine.
    assert running_instances(fleet, "v2") == 4


def test_capacity_guard_blocks_while_load_says_so(tight_fleet: Fleet) -> None:
    fleet = tight_fleet
    # One instance carries 2 req/s; the sessions below send far more, so v1 needs all of
    # its 4 instances and a rolling release (one slot per host) cannot free a slot.
    small = [*COMMON, "--capacity", "2"]
    assert fleet.deploy("shop", "v1", *small).returncode == 0
    with SessionLoad(fleet.http, users=6, requests_per_session=10, think=0.05) as load:
        wait_for("load on v1", lambda: load.requests() > 50, timeout=30)
        started = fleet.deploy("shop", "v2", *small, "--strategy", "rolling", wait=False)
        assert started.returncode == 0, started.stderr

        def blocked() -> str:
            r = rollout(fleet, "shop")
            reason = str(r.get("reason") or "")
            return reason if r.get("state") == "progressing" and "req/s" in reason else ""

        # The guard names the version, its live load and the instances it needs.
        reason = wait_for("the capacity guard to hold the rollout", blocked, timeout=60)
        needs = re.search(
            r"v1 still carries [0-9.]+ req/s and needs (\d+) of its 4 instances", reason
        )
        assert needs is not None and int(needs.group(1)) >= 4, reason
        assert fleet.ready_instances("shop", "v1") == 4
        assert fleet.ready_instances("shop", "v2") == 0
        assert "v1 still carries" in fleet.cli("events", "shop").stdout
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    # The load is gone: the sessions go idle and the rollout goes on to the end.
    wait_for(
        "the rollout to succeed once the load is gone",
        lambda: rollout(fleet, "shop").get("state") == "succeeded",
        timeout=120,
    )
    assert fleet.ready_instances("shop", "v2") == 4
