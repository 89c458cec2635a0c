"""The controller fills the router's drain deadline (docs/protocol.md): each draining
instance in the route table carries ``drain_deadline`` = when it was drained + its
release's ``drain_timeout`` (stored, so a restarted controller builds the same table),
each version its ``drain_timeout``; and the engine does not stop a draining instance
that routers still report work on before that deadline. Real HTTP, the real planner."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import controller_fakes
import httpx
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


# ---- end to end: a real router closes WebSockets at the controller's deadline -------------


class _WsHandler(controller_fakes._InstanceHandler):  # type: ignore[name-defined,misc]
    """The fake instance, plus ``/ws``: a tunnel held open until the router closes it."""

    def do_GET(self) -> None:
        if self.path != "/ws":
            super().do_GET()
            return
        srv: Any = self.server
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nX-Instance: " + srv.address.encode() + b"\r\n\r\n"
        )
        self.wfile.flush()
        while self.rfile.read1(4096):  # until the router closes its side
            pass
        self.close_connection = True


class _WsInstance(controller_fakes._Instance):  # type: ignore[name-defined,misc]
    def __init__(self, version: str, broken: bool, smoke_gate: Any = None) -> None:
        super().__init__(version, broken, smoke_gate)
        self.httpd.RequestHandlerClass = _WsHandler
        self.httpd.address = self.address  # type: ignore[attr-defined]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Tunnel:
    """A WebSocket through the router; a thread waits for the router's close frame."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        text = head.decode("latin-1")
        assert text.startswith("HTTP/1.1 101"), text
        self.instance = next(
            line.split(":", 1)[1].strip()
            for line in text.split("\r\n")
            if line.lower().startswith("x-instance:")
        )
        self.code: int | None = None
        self.closed_at: float | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        self.sock.settimeout(120)
        try:
            first = self.sock.recv(2)
            if len(first) == 2 and first[0] & 0x0F == 8:
                self.closed_at = time.time()
                payload = self.sock.recv(first[1] & 0x7F)
                self.code = int.from_bytes(payload[:2], "big")
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.thread.join(5)


def _reported_inflight(fleet: Fleet, router_id: str) -> int:
    other = SqliteStore(fleet.db)
    try:
        return sum(
            int(i.get("inflight", 0))
            for rid, report, _ in other.router_reports()
            if rid == router_id
            for i in report.get("instances") or ()
        )
    finally:
        other.close()


def test_a_real_router_closes_tunnels_at_the_controllers_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_fakes, "_Instance", _WsInstance)
    port = _free_port()
    with Fleet(tmp_path) as fleet:
        router = subprocess.Popen(
            [
                sys.executable, "-m", "skewless", "router",
                "--listen", f"127.0.0.1:{port}", "--controller", fleet.url, "--id", "edge",
                "--report-interval", "0.3", "--cache", str(tmp_path / "routes-cache.json"),
                "--upgrade-socket", "off",
                # Without the table's deadline the router would wait 10 minutes.
                "--drain-timeout", "600",
            ],
            env={**os.environ, "SKEWLESS_HOME": str(tmp_path / "home")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        tunnels: list[_Tunnel] = []
        try:
            fleet.deploy("v1", drain_timeout=2, session={"idle_timeout": 1})
            wait_for(lambda: fleet.rollout_state("succeeded"), what="v1 live")

            def routed() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(routed, what="the router to serve v1")
            tunnels = [_Tunnel(port) for _ in range(4)]
            v1 = {i["address"]: i["id"] for i in fleet.status()["versions"][0]["instances"]}
            assert {t.instance for t in tunnels} <= set(v1)
            # The controller only knows the routers that have reported: wait for this
            # one's report of its tunnels before any drain.
            wait_for(lambda: _reported_inflight(fleet, "edge") == 4, what="the router's report")
            fleet.deploy("v2", drain_timeout=1, session={"idle_timeout": 1})
            wait_for(
                lambda: all(t.closed_at is not None for t in tunnels),
                timeout=60,
                what="the router to close every tunnel",
            )
            other = SqliteStore(fleet.db)
            try:
                drained = {a: other.get_instance(i) for a, i in v1.items()}
            finally:
                other.close()
            for t in tunnels:
                row = drained[t.instance]
                assert row is not None and row.drained_at is not None
                assert t.code == 1001
                assert t.closed_at is not None and t.closed_at >= row.drained_at + 2 - 0.05
            wait_for(lambda: fleet.rollout_state("succeeded"), what="v2 live")
            stops = {iid: s.now for s, iid in fleet.recorder.stops()}
            for address, iid in v1.items():
                row = drained[address]
                assert row is not None and row.drained_at is not None
                if any(t.instance == address for t in tunnels):
                    assert stops[iid] >= row.drained_at + 2, "stopped before its deadline"
        finally:
            for t in tunnels:
                t.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(router.pid, signal.SIGKILL)
            router.wait(10)
