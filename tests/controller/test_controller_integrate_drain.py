"""The controller fills the router's drain deadline (docs/protocol.md): each draining
instance in the route table carries ``drain_deadline`` = when it was drained + its
release's ``drain_timeout`` (stored, so a restarted controller builds the same table),
each version its ``drain_timeout``; and the engine does not stop a draining instance
that routers still report work on before that deadline. Real HTTP, the real planner."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import wait_for

from skewless.controller import tables
from skewless.controller.api import create_app
from skewless.controller.store_sqlite import SqliteStore
from skewless.core.plan import FleetSnapshot, Plan, StopInstance
from skewless.core.planner import plan

_spec = importlib.util.spec_from_file_location(
    "controller_engine_harness_drain", Path(__file__).with_name("test_controller_engine.py")
)
assert _spec and _spec.loader
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)


class Recorder:
    """The real planner, remembering every snapshot and plan (for the test's checks)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[FleetSnapshot, Plan]] = []

    def __call__(self, snapshot: FleetSnapshot) -> Plan:
        result = plan(snapshot)
        with self.lock:
            self.calls.append((snapshot, result))
        return result

    def count(self) -> int:
        with self.lock:
            return len(self.calls)

    def stops(self) -> list[tuple[FleetSnapshot, str]]:
        with self.lock:
            return [
                (s, a.instance_id)
                for s, p in self.calls
                for a in p.actions
                if isinstance(a, StopInstance)
            ]


class Fleet(_harness.Fleet):  # type: ignore[misc,name-defined]
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, real_planner=True)
        self.db = tmp_path / "c.db"
        self.recorder = Recorder()
        self.app = create_app(self.store, clock=self.clock, planner=self.recorder, tick=0.05)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(tmp_path) as f:
        yield f


def _draining(table: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        i
        for a in table["apps"]
        for v in a["versions"]
        for i in v["instances"]
        if i["state"] == "draining"
    ]


def test_draining_instance_gets_its_deadline_and_keeps_work_until_it(fleet: Fleet) -> None:
    fleet.deploy("v1", drain_timeout=40)
    wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 live")
    v1_ids = [i["id"] for i in fleet.status()["versions"][0]["instances"]]
    for iid in v1_ids:
        fleet.router.inflight[iid] = 2  # a WebSocket each, say
    before = fleet.clock()
    # v2 drains faster: the planner must still honour v1's own deadline.
    fleet.deploy("v2", drain_timeout=5)
    (item,) = wait_for(lambda: _draining(fleet.router.table), what="a v1 instance draining")
    after = fleet.clock()
    table = fleet.router.table
    versions = {v["version"]: v for v in table["apps"][0]["versions"]}
    assert versions["v1"]["drain_timeout"] == 40.0
    assert versions["v2"]["drain_timeout"] == 5.0
    assert item["id"] in v1_ids
    deadline = item["drain_deadline"]
    assert before + 40 <= deadline <= after + 40
    # The deadline is the stored drain time + the release's timeout: a controller built
    # afresh on the same store (a restart) publishes the same one.
    other = SqliteStore(fleet.db)
    try:
        row = other.get_instance(item["id"])
        assert row is not None and row.drained_at is not None
        assert deadline == pytest.approx(row.drained_at + 40, abs=1e-3)
        rebuilt = tables.build_table(other)
        (again,) = _draining({"apps": rebuilt["apps"]})
        assert again["drain_deadline"] == deadline
    finally:
        other.close()
    # Past v2's drain_timeout, before v1's deadline, with work in flight: not stopped.
    fleet.clock.offset += 10
    seen = fleet.recorder.count()
    wait_for(lambda: fleet.recorder.count() > seen + 5, what="the engine planning on")
    assert [iid for _, iid in fleet.recorder.stops() if iid == item["id"]] == []
    status = fleet.status()
    assert "in flight" in (status["rollout"]["waiting_for"] or ""), status["rollout"]
    assert [i["id"] for i in _draining(fleet.router.table)] == [item["id"]]
    # Past the deadline the router has closed its tunnels; the instance is stopped.
    fleet.clock.offset += 31
    wait_for(
        lambda: item["id"] not in {i["id"] for i in _draining(fleet.router.table)},
        what="the drained instance stopped",
    )
    stops = [(s, iid) for s, iid in fleet.recorder.stops() if iid == item["id"]]
    assert stops and all(s.now >= deadline for s, _ in stops)
