"""The rollout engine over real HTTP: a controller (uvicorn in a thread, injected clock
and the stand-in planner), fake agents that run tiny real HTTP instances, a fake router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from controller_fakes import FakeAgent, FakeRouter, ServerThread, plan, wait_for

from skewless.controller.api import create_app
from skewless.controller.store_sqlite import SqliteStore

CMD = ["python", "-m", "app", "--port", "{port}"]


class Clock:
    """Real time plus an offset the test can move (for session idle timeouts)."""

    def __init__(self) -> None:
        import time

        self._time = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self._time() + self.offset


class Fleet:
    def __init__(self, tmp_path: Path, *, real_planner: bool = False) -> None:
        self.clock = Clock()
        self.store = SqliteStore(tmp_path / "c.db")
        planner = None if real_planner else plan  # None: skewless.core.planner.plan
        self.app = create_app(self.store, clock=self.clock, planner=planner, tick=0.05)

    def __enter__(self) -> Fleet:
        self.server = ServerThread(self.app).__enter__()
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.agents = [FakeAgent(self.url, f"h{i}").__enter__() for i in (1, 2)]
        self.router = FakeRouter(self.url).__enter__()
        wait_for(lambda: len(self.http.get("/v1/hosts").json()["hosts"]) == 2, what="hosts")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.router.__exit__()
            for a in self.agents:
                a.__exit__()
            self.http.close()
        finally:
            self.server.__exit__()
            self.store.close()

    def deploy(self, version: str, **extra: Any) -> dict[str, Any]:
        body = {"version": version, "command": CMD, "instances": 2, **extra}
        r = self.http.post("/v1/apps/shop/deploy", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def status(self) -> dict[str, Any]:
        return self.http.get("/v1/apps/shop").json()

    def rollout_state(self, want: str) -> dict[str, Any] | None:
        s = self.status()
        return s if s["rollout"]["state"] == want else None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs = self.http.get("/v1/events", params={"app": "shop"}).json()["events"]
        return [e for e in evs if kind is None or e["kind"] == kind]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(tmp_path) as f:
        yield f


def test_first_deploy_brings_up_instances_and_routes(fleet: Fleet) -> None:
    wait_for(lambda: len(fleet.http.get("/v1/hosts").json()["hosts"]) == 2, what="hosts")
    fleet.deploy("v1", smoke=[{"path": "/", "status": 200}])
    status = wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    (v1,) = status["versions"]
    assert (v1["version"], v1["state"], v1["weight"]) == ("v1", "live", 1.0)
    assert sorted(i["host"] for i in v1["instances"]) == ["h1", "h2"]
    assert all(i["state"] == "ready" and i["address"] for i in v1["instances"])
    table = wait_for(lambda: fleet.router.table["apps"] and fleet.router.table, what="table")
    routed = table["apps"][0]["versions"][0]["instances"]
    assert sorted(i["address"] for i in routed) == sorted(i["address"] for i in v1["instances"])
    smoke = [e for e in fleet.events("action") if e["message"].startswith("smoke-check")]
    assert len(smoke) == 2 and all("passed (GET / -> 200)" in e["message"] for e in smoke)
    # generations only grew, as seen by the router
    assert fleet.router.generations == sorted(fleet.router.generations)


def test_old_version_retires_only_after_its_sessions_go_idle(fleet: Fleet) -> None:
    fleet.deploy("v1", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    fleet.router.traffic["v1"] = {"rps": 5.0, "sessions": 3, "last_pinned_at": fleet.clock()}
    fleet.deploy("v2", session={"idle_timeout": 300})
    status = wait_for(
        lambda: (
            (s := fleet.status())["rollout"]["waiting_for"] == "v1 still has 3 live sessions" and s
        ),
        what="waiting on v1 sessions",
    )
    v1, v2 = status["versions"]
    assert (v1["state"], v1["weight"], v2["weight"]) == ("draining", 0.0, 1.0)
    assert len(v1["instances"]) == 2  # still serving its sessions
    assert any(e["message"] == "v1 still has 3 live sessions" for e in fleet.events("waiting"))
    # sessions end; the idle timeout has to pass before v1 retires
    fleet.router.traffic["v1"] = {"rps": 0.0, "sessions": 0, "last_pinned_at": fleet.clock()}
    wait_for(lambda: fleet.status()["versions"][0]["sessions"] == 0, what="sessions reported")
    assert fleet.status()["versions"][0]["state"] == "draining"
    fleet.clock.offset += 301
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v2 rollout")
    status = wait_for(
        lambda: (s := fleet.status())["versions"][0]["instances"] == [] and s, what="v1 gone"
    )
    v1, v2 = status["versions"]
    assert v1["state"] == "retired" and v1["instances"] == []
    assert v2["state"] == "live" and len(v2["instances"]) == 2
    # the agents were asked to stop v1 instances, and did
    for agent in fleet.agents:
        assert not any("/v1/" in iid for iid in agent.running)
    retire = [e for e in fleet.events("action") if e["message"].startswith("retire v1")]
    assert retire and "sessions_idle" in retire[0]["message"]


def test_failed_smoke_check_fails_the_rollout_and_keeps_v1(fleet: Fleet) -> None:
    fleet.deploy("v1")
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    for a in fleet.agents:
        a.broken_versions.add("v2")
    fleet.deploy("v2")
    status = wait_for(lambda: fleet.rollout_state("failed"), what="v2 failure")
    assert "smoke checks failed" in status["rollout"]["reason"]
    v1, v2 = status["versions"]
    assert v1["weight"] == 1.0 and v2["weight"] == 0.0
    assert all(i["table"] == "absent" for i in v2["instances"])
    assert any(
        "FAILED (GET /healthz -> 500, expected 200)" in e["message"] for e in fleet.events("action")
    )


def test_pause_holds_the_rollout_and_resume_continues(fleet: Fleet) -> None:
    fleet.deploy("v1")
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    fleet.router.traffic["v1"] = {"sessions": 1, "last_pinned_at": fleet.clock()}
    fleet.deploy("v2", session={"idle_timeout": 60})
    wait_for(lambda: fleet.status()["rollout"]["waiting_for"], what="v2 waiting")
    assert fleet.http.post("/v1/apps/shop/pause").json()["rollout"]["state"] == "paused"
    fleet.router.traffic["v1"] = {"sessions": 0, "last_pinned_at": fleet.clock()}
    fleet.clock.offset += 120
    # an action already under way when the pause came (a smoke check) may still finish
    engine = fleet.app.state.engine
    ticks = engine.steps
    wait_for(lambda: engine.steps > ticks + 1, what="engine steps after pause")
    journal_before = len(fleet.events("action"))
    # the engine keeps ticking, but a paused rollout takes no action
    ticks = fleet.app.state.engine.steps
    wait_for(lambda: fleet.app.state.engine.steps > ticks + 5, what="engine ticks")
    assert len(fleet.events("action")) == journal_before
    assert fleet.status()["rollout"]["state"] == "paused"
    fleet.http.post("/v1/apps/shop/resume")
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v2 rollout after resume")


def test_abort_sends_new_sessions_back_and_rollback_undoes(fleet: Fleet) -> None:
    fleet.deploy("v1")
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 rollout")
    fleet.router.traffic["v1"] = {"sessions": 2, "last_pinned_at": fleet.clock()}
    fleet.deploy("v2", session={"idle_timeout": 600})
    wait_for(lambda: fleet.status()["versions"][1]["weight"] == 1.0, what="v2 takes new sessions")
    r = fleet.http.post("/v1/apps/shop/abort")
    assert r.json()["rollout"]["state"] == "aborted"
    v1, v2 = fleet.status()["versions"]
    assert (v1["state"], v1["weight"], v2["weight"]) == ("live", 1.0, 0.0)
    assert len(v2["instances"]) == 2  # stopped where it stood
    # rollback from the aborted v2 to v1: v2 is retired and its instances stopped
    r = fleet.http.post("/v1/apps/shop/rollback", json={"broken": True})
    assert r.status_code == 201, r.text
    assert (r.json()["rollout"]["to"], r.json()["rollout"]["rollback_of"]) == ("v1", "v2")
    wait_for(lambda: fleet.rollout_state("succeeded"), what="rollback")
    # the agents confirm the stops after the rollout asked for them
    status = wait_for(
        lambda: (s := fleet.status())["versions"][1]["instances"] == [] and s, what="v2 gone"
    )
    v1, v2 = status["versions"]
    assert v2["state"] == "retired"
    assert v1["weight"] == 1.0
    assert any("rolled_back" in e["message"] for e in fleet.events("action"))


def test_host_running_the_wrong_version_blocks_completion(fleet: Fleet) -> None:
    fleet.agents[1].runs_instead["v1"] = "v0"
    fleet.deploy("v1")
    status = wait_for(
        lambda: (
            (s := fleet.status())["rollout"]["waiting_for"]
            and "runs v0" in s["rollout"]["waiting_for"]
            and s
        ),
        what="wrong version noticed",
    )
    assert status["rollout"]["state"] == "progressing"
