"""The engine driving the real planner (skewless.core.planner) over real HTTP, with the
fake agents and router: session-aware retirement after success, and a broken-release
rollback."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from controller_fakes import wait_for

# Reuse the Fleet harness of the engine tests, with the real planner.
_spec = importlib.util.spec_from_file_location(
    "controller_engine_harness", Path(__file__).with_name("test_controller_engine.py")
)
assert _spec and _spec.loader
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
Fleet = _harness.Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(tmp_path, real_planner=True) as f:
        yield f


def test_side_by_side_success_then_retire_when_sessions_idle(fleet: Fleet) -> None:
    fleet.deploy("v1", strategy="side-by-side", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    fleet.router.traffic["v1"] = {"rps": 2.0, "sessions": 3, "last_pinned_at": fleet.clock()}
    fleet.deploy("v2", strategy="side-by-side", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v2 live")
    status = wait_for(
        lambda: (
            "v1 keeps serving its sessions"
            in ((s := fleet.status())["rollout"]["waiting_for"] or "")
            and s
        ),
        what="v1 still serving",
    )
    v1, v2 = status["versions"]
    assert (v2["state"], v2["weight"], len(v2["instances"])) == ("live", 1.0, 2)
    assert v1["state"] == "draining" and v1["instances"], "v1 keeps serving its sessions"
    # sessions end; once the idle timeout has passed v1 retires and its instances stop
    fleet.router.traffic["v1"] = {"rps": 0.0, "sessions": 0, "last_pinned_at": fleet.clock()}
    fleet.clock.offset += 301
    status = wait_for(
        lambda: (s := fleet.status())["versions"][0]["instances"] == [] and s, what="v1 retired"
    )
    assert status["versions"][0]["state"] == "retired"
    wait_for(lambda: fleet.events("settled"), what="rollout settled")
    retire = [e for e in fleet.events("action") if e["message"].startswith("retire v1")]
    assert len(retire) == 1 and "sessions_idle" in retire[0]["message"]


def test_rollback_of_a_broken_release_retires_it_at_once(fleet: Fleet) -> None:
    fleet.deploy("v1", strategy="side-by-side", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    fleet.deploy("v2", strategy="side-by-side", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v2 live")
    fleet.router.traffic["v2"] = {"rps": 1.0, "sessions": 5, "last_pinned_at": fleet.clock()}
    r = fleet.http.post("/v1/apps/shop/rollback")
    assert r.status_code == 201, r.text
    assert (r.json()["rollout"]["to"], r.json()["rollout"]["rollback_of"]) == ("v1", "v2")
    status = wait_for(
        lambda: (s := fleet.status())["versions"][1]["state"] == "retired" and s,
        what="v2 retired despite its sessions",
    )
    assert status["versions"][0]["weight"] == 1.0
    assert any("retire v2 (rolled_back)" in e["message"] for e in fleet.events("action"))
    wait_for(lambda: fleet.rollout_state("succeeded"), what="rollback rollout")


def test_succeed_when_retired_waits_for_the_old_sessions(fleet: Fleet) -> None:
    fleet.deploy("v1", strategy="side-by-side", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    fleet.router.traffic["v1"] = {"rps": 1.0, "sessions": 2, "last_pinned_at": fleet.clock()}
    fleet.deploy(
        "v2", strategy="side-by-side", session={"idle_timeout": 300}, succeed_when="retired"
    )
    status = wait_for(
        lambda: (
            (s := fleet.status())["versions"][1]["weight"] == 1.0
            and "v1 keeps serving its sessions" in (s["rollout"]["waiting_for"] or "")
            and s
        ),
        what="v2 takes new sessions while v1 serves its own",
    )
    assert status["rollout"]["state"] == "progressing"
    fleet.router.traffic["v1"] = {"rps": 0.0, "sessions": 0, "last_pinned_at": fleet.clock()}
    fleet.clock.offset += 301
    status = wait_for(lambda: fleet.rollout_state("succeeded"), what="success after retirement")
    assert status["versions"][0]["state"] == "retired"
