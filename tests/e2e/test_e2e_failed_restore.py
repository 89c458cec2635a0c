"""A rolling release whose new version crashes at start fails, with its reason, and the
old version gets back every instance it gave up for it: after the failure the fleet runs
v1 x 4 again, and a light session load sees no failed request throughout."""

from __future__ import annotations

import os
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


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path, hosts=4, slots=4) as f:
        yield f


def v1_in_table(fleet: Fleet) -> int:
    """Ready v1 instances in the route table the routers read."""
    table = httpx.get(f"{fleet.api}/v1/routes", timeout=10).json()
    return sum(
        1
        for app in table["apps"]
        if app["name"] == "shop"
        for v in app["versions"]
        if v["version"] == "v1" and v["state"] == "live"
        for i in v["instances"]
        if i["state"] == "ready"
    )


def test_failed_rolling_release_gives_v1_its_instances_back(fleet: Fleet) -> None:
    first = fleet.deploy("shop", "v1", "--instances", "4", "--session-idle-timeout", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert wait_for("v1 x 4 in the table", lambda: v1_in_table(fleet) == 4, timeout=30)
    crash = f"{sys.executable} -c 'raise SystemExit(1)' {{port}} --mark {fleet.marker}"
    with SessionLoad(fleet.http, users=3, requests_per_session=6, think=0.2) as load:
        wait_for("sessions on v1", lambda: load.requests() > 10, timeout=30)
        done = fleet.cli(
            "deploy", "shop", "v2", "--command", crash, "--health", "/healthz",
            "--instances", "4", "--strategy", "rolling", "--wait",
        )  # fmt: skip
        assert done.returncode != 0, done.stdout + done.stderr
        status = fleet.status("shop")
        assert status["rollout"]["state"] == "failed", status["rollout"]
        reason = status["rollout"]["reason"]
        assert "/shop/v2/" in reason and "failed on" in reason, reason
        # v1 had given one instance up to make room for v2: it comes back.
        assert wait_for("v1 x 4 again", lambda: v1_in_table(fleet) == 4, timeout=60)
        assert wait_for("v1 x 4 ready", lambda: fleet.ready_instances("shop", "v1") == 4, 30)
        count = load.requests()
        wait_for("more sessions after the failure", lambda: load.requests() > count + 10, 30)
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    assert [s.versions for s in load.mixed()] == []
    assert load.versions_seen() == {"v1"}
    status = fleet.status("shop")
    (v1,) = [v for v in status["versions"] if v["version"] == "v1"]
    assert (v1["state"], v1["weight"]) == ("live", 1.0)
    assert len(v1["instances"]) == 4
    assert not [i for v in status["versions"] if v["version"] == "v2" for i in v["instances"]], (
        "the failed release's instance is stopped"
    )
