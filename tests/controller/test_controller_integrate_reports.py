"""Router reports from a router with ``--workers N`` (one reporter per worker, ``ID-wK``)
and from reporters that go silent: how the controller adds them up. Real HTTP reports
to a real controller; what the planner gets is read from the controller's store."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import wait_for

from skewless.controller.snapshot import STALE, RouterFacts, router_facts
from skewless.controller.store_sqlite import SqliteStore

_spec = importlib.util.spec_from_file_location(
    "controller_engine_harness_reports", Path(__file__).with_name("test_controller_engine.py")
)
assert _spec and _spec.loader
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)


class Fleet(_harness.Fleet):  # type: ignore[misc,name-defined]
    """The engine test fleet, posting router reports of its own."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, real_planner=True)
        self.db = tmp_path / "c.db"

    def facts(self) -> RouterFacts:
        """What the engine's snapshot takes from the router reports, now."""
        other = SqliteStore(self.db)
        try:
            return router_facts(other, self.clock())
        finally:
            other.close()

    def report(self, router_id: str, generation: int, traffic: dict[str, Any]) -> None:
        versions = [
            {
                "version": v,
                "requests": t["requests"],
                "errors_5xx": 0,
                "connect_failures": 0,
                "rps": t["rps"],
                "latency_ms": {"le_5": t["requests"], "le_inf": t["requests"]},
                "last_pinned_at": t["last_pinned_at"],
                "sessions": t["sessions"],
            }
            for v, t in traffic.items()
        ]
        body = {
            "router_id": router_id,
            "generation": generation,
            "time": self.clock(),
            "apps": [{"app": "shop", "versions": versions}],
            "instances": [],
        }
        r = self.http.post(f"/v1/routers/{router_id}/report", json=body)
        assert r.status_code == 204, r.text


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(tmp_path) as f:
        yield f


def _v1(fleet: Fleet) -> dict[str, Any]:
    return next(v for v in fleet.status()["versions"] if v["version"] == "v1")


def test_reports_of_each_worker_add_up_and_silent_ones_stop_counting(fleet: Fleet) -> None:
    fleet.deploy("v1", session={"idle_timeout": 300})
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 live")
    current = fleet.status()["table_generation"]
    now = fleet.clock()
    # One router with two workers: each reports what it saw itself.
    fleet.report(
        "edge-w0",
        current,
        {"v1": {"requests": 30, "rps": 3.0, "sessions": 2, "last_pinned_at": now - 20}},
    )
    fleet.report(
        "edge-w1",
        current - 1,  # this worker has not loaded the newest table yet
        {"v1": {"requests": 50, "rps": 4.5, "sessions": 3, "last_pinned_at": now - 5}},
    )
    v1 = wait_for(lambda: (v := _v1(fleet))["load"] == 7.5 and v, what="summed load")
    # load: sum; sessions: sum (an overestimate when a session meets both workers);
    # last pinned request: the latest any worker saw.
    assert (v1["sessions"], v1["last_pinned_at"]) == (5, now - 5)
    facts = fleet.facts()
    # The lowest generation among recent reporters: the fleet is not all on `current`.
    assert facts.generation == current - 1
    view = facts.traffic[("shop", "v1")]
    assert (view.load, view.sessions, view.last_pinned_at) == (7.5, 5, now - 5)
    # edge-w1 goes silent (its worker was replaced; or the router was upgraded by
    # handover and reports under another id): after STALE seconds it no longer holds
    # the generation back, nor adds load, but the pinned request it saw still counts.
    fleet.clock.offset += STALE + 1
    fleet.report(
        "edge-w0",
        current,
        {"v1": {"requests": 40, "rps": 1.0, "sessions": 1, "last_pinned_at": now - 20}},
    )
    facts = wait_for(
        lambda: (f := fleet.facts()).generation == current and f,
        what="the silent worker to stop holding the generation back",
    )
    view = facts.traffic[("shop", "v1")]
    assert (view.load, view.sessions) == (1.0, 1)
    assert view.last_pinned_at == now - 5  # invariant 3: idle time counts from here
    v1 = wait_for(lambda: (v := _v1(fleet))["load"] == 1.0 and v, what="load without w1")
    assert v1["last_pinned_at"] == now - 5
