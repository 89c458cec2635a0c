"""Test fleet for the controller: real HTTP, no other branch needed.

- ``plan``: a small, level-triggered stand-in planner (start -> smoke -> add -> weights
  -> retire idle versions -> drain -> stop -> finish) used until the real planner lands.
- ``FakeAgent``: a thread that long-polls ``/v1/hosts/ID/desired`` and runs each desired
  instance as a tiny real HTTP server on 127.0.0.1 port 0, then posts agent reports.
- ``FakeRouter``: a thread that long-polls ``/v1/routes`` and posts router reports with
  the load and sessions a test sets.
- ``ServerThread``: a real uvicorn serving a controller app on 127.0.0.1 port 0, in a
  thread (so a test can inject the clock and the planner).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn

from skewless.core.model import InstanceState, RolloutState, VersionState
from skewless.core.plan import (
    Action,
    AddToTable,
    DrainInstance,
    FinishRollout,
    FleetSnapshot,
    Plan,
    RetireVersion,
    RunSmoke,
    SetWeights,
    StartInstance,
    StopInstance,
)

# ---- stand-in planner ----------------------------------------------------------------


def plan(s: FleetSnapshot) -> Plan:
    spec = s.rollout
    target = spec.to_version
    hosts = sorted(h.id for h in s.hosts if h.alive)
    if not hosts:
        return Plan(waiting_for="no live hosts")
    by_id = {i.id: i for i in s.instances}
    new = [i for i in s.instances if i.version == target and i.desired != "stopped"]
    for i in new:
        if i.smoke == "failed":
            return Plan(
                actions=(
                    FinishRollout(
                        state=RolloutState.FAILED, reason=f"smoke checks failed on {i.id}"
                    ),
                )
            )
    actions: list[Action] = []
    per_host = {h: sum(1 for i in new if i.host == h) for h in hosts}
    for _ in range(spec.instances - len(new)):
        host = min(hosts, key=lambda h: (per_host[h], h))
        n = 0
        while f"{host}/{spec.app}/{target}/{n}" in by_id:
            n += 1
        iid = f"{host}/{spec.app}/{target}/{n}"
        by_id[iid] = None  # type: ignore[assignment]
        per_host[host] += 1
        actions.append(StartInstance(instance_id=iid, host=host, version=target))
    for i in new:
        if i.state == InstanceState.READY and i.running_version not in (None, target):
            return Plan(waiting_for=f"{i.host} runs {i.running_version}, not {target}")
        if i.state == InstanceState.READY and i.running_version == target:
            if i.smoke == "pending":
                actions.append(RunSmoke(instance_id=i.id))
            elif i.smoke == "passed" and i.table == "absent":
                actions.append(AddToTable(instance_id=i.id))
    if actions:
        return Plan(actions=tuple(actions))
    ready = [i for i in new if i.table == "ready"]
    if len(ready) < spec.instances:
        return Plan(
            waiting_for=f"{spec.instances - len(ready)} instance(s) of {target} not ready yet"
        )
    weights = {v.version: v.weight for v in s.versions}
    if weights.get(target) != 1.0:
        shares = tuple(
            (v.version, 1.0 if v.version == target else 0.0)
            for v in s.versions
            if v.state != VersionState.RETIRED or v.version == target
        )
        return Plan(actions=(SetWeights(weights=shares, step=len(spec.steps) - 1),))
    waiting = None
    for v in s.versions:
        if v.version == target or v.state == VersionState.RETIRED:
            continue
        idle_since = max(v.last_pinned_at or 0.0, v.weight_zero_since or 0.0)
        if spec.rollback_of == v.version:
            actions.append(RetireVersion(version=v.version, reason="rolled_back"))
        elif v.sessions == 0 and s.now - idle_since >= spec.idle_timeout:
            actions.append(RetireVersion(version=v.version, reason="sessions_idle"))
        elif v.live_since is not None and s.now - v.live_since >= spec.max_lifetime:
            actions.append(RetireVersion(version=v.version, reason="max_lifetime"))
        else:
            waiting = f"{v.version} still has {v.sessions} live sessions"
    retired = {v.version for v in s.versions if v.state == VersionState.RETIRED}
    old = [i for i in s.instances if i.version != target and i.desired != "stopped"]
    for i in old:
        if i.version not in retired:
            continue
        if i.table == "ready":
            actions.append(DrainInstance(instance_id=i.id))
        elif i.table == "draining" or i.table == "absent":
            seen = s.routers_generation is None or (
                i.drain_generation is None or s.routers_generation >= i.drain_generation
            )
            if seen and i.inflight == 0:
                actions.append(StopInstance(instance_id=i.id))
            else:
                waiting = f"{i.id} still draining"
    if actions:
        return Plan(actions=tuple(actions), waiting_for=waiting)
    if waiting:
        return Plan(waiting_for=waiting)
    return Plan(
        actions=(
            FinishRollout(state=RolloutState.SUCCEEDED, reason=f"{target} serves all new sessions"),
        )
    )


def plan_one(s: FleetSnapshot) -> Plan:
    """``plan`` taking one action per step: slower rollouts with more points to crash at."""
    p = plan(s)
    return Plan(actions=p.actions[:1], waiting_for=p.waiting_for)


# ---- a controller in a thread ----------------------------------------------------------


class ServerThread:
    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])  # uvloop, as the CLI runs it

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "controller did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


# ---- fake instances, agents and routers ---------------------------------------------------


class _InstanceHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        srv: Any = self.server
        if self.headers.get("Skewless-Smoke") and srv.smoke_gate is not None:
            srv.smoke_gate.wait(30)  # hold smoke checks until the test lets them through
        status = 500 if srv.broken else 200
        body = f"{srv.version}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Instance:
    def __init__(
        self, version: str, broken: bool, smoke_gate: threading.Event | None = None
    ) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _InstanceHandler)
        self.httpd.smoke_gate = smoke_gate  # type: ignore[attr-defined]
        self.httpd.daemon_threads = True
        self.httpd.version = version  # type: ignore[attr-defined]
        self.httpd.broken = broken  # type: ignore[attr-defined]
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@dataclass
class FakeAgent:
    url: str
    host_id: str
    slots: int = 4
    token: str | None = None
    broken_versions: set[str] = field(default_factory=set)
    smoke_gate: threading.Event | None = None
    """When set, instances answer smoke checks only once this event is set."""
    """Instances of these versions answer 500 (smoke checks fail)."""
    runs_instead: dict[str, str] = field(default_factory=dict)
    """Report this version instead of the asked one (a host running the wrong thing)."""
    seen: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Every desired state received: (generation, {instance id: desired})."""
    poll_wait: float = 0.3

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.running: dict[str, _Instance] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.generation = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(10)
        for inst in self.running.values():
            inst.stop()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _loop(self) -> None:
        with httpx.Client(timeout=5, headers=self._headers()) as client:
            while not self.stop_event.is_set():
                try:
                    r = client.get(
                        f"{self.url}/v1/hosts/{self.host_id}/desired",
                        params={"generation": self.generation, "wait": self.poll_wait},
                    )
                    if r.status_code == 200:
                        body = r.json()
                        self.seen.append(
                            (body["generation"], {i["id"]: i["desired"] for i in body["instances"]})
                        )
                        self._reconcile(body)
                        self.generation = body["generation"]
                    client.post(f"{self.url}/v1/hosts/{self.host_id}/report", json=self.report())
                except httpx.HTTPError:
                    self.stop_event.wait(0.05)  # controller down: retry

    def _reconcile(self, desired: dict[str, Any]) -> None:
        for item in desired["instances"]:
            iid, version = item["id"], item["version"]
            if item["desired"] == "running" and iid not in self.running:
                runs = self.runs_instead.get(version, version)
                inst = _Instance(
                    runs, broken=version in self.broken_versions, smoke_gate=self.smoke_gate
                )
                self.running[iid] = inst
                self.states[iid] = {
                    "id": iid,
                    "app": item["app"],
                    "version": runs,
                    "state": "ready",
                    "address": inst.address,
                    "pid": 1000 + len(self.states),
                    "restarts": 0,
                    "health": {"ok": True, "status": 200, "at": time.time(), "error": None},
                    "reason": None,
                }
            elif item["desired"] == "stopped" and iid in self.running:
                self.running.pop(iid).stop()
                self.states[iid] = {**self.states[iid], "state": "stopped", "address": None}

    def report(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "slots": self.slots,
            "generation": self.generation,
            "instances": list(self.states.values()),
        }


@dataclass
class FakeRouter:
    url: str
    router_id: str = "r1"
    token: str | None = None
    traffic: dict[str, dict[str, Any]] = field(default_factory=dict)
    """version -> {"rps", "sessions", "last_pinned_at"} to report for app ``app``."""
    app: str = "shop"
    inflight: dict[str, int] = field(default_factory=dict)
    generations: list[int] = field(default_factory=list)
    """Every route-table generation received, in order."""
    poll_wait: float = 0.3

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.table: dict[str, Any] = {"generation": 0, "apps": []}
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeRouter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def _loop(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with httpx.Client(timeout=5, headers=headers) as client:
            while not self.stop_event.is_set():
                try:
                    r = client.get(
                        f"{self.url}/v1/routes",
                        params={"generation": self.table["generation"], "wait": self.poll_wait},
                    )
                    if r.status_code == 200:
                        self.table = r.json()
                        self.generations.append(self.table["generation"])
                    client.post(
                        f"{self.url}/v1/routers/{self.router_id}/report", json=self.report()
                    )
                except httpx.HTTPError:
                    self.stop_event.wait(0.05)

    def report(self) -> dict[str, Any]:
        versions = [
            {
                "version": v,
                "requests": 0,
                "errors_5xx": 0,
                "connect_failures": 0,
                "rps": t.get("rps", 0.0),
                "latency_ms": {"le_inf": 0},
                "last_pinned_at": t.get("last_pinned_at"),
                "sessions": t.get("sessions", 0),
            }
            for v, t in dict(self.traffic).items()
        ]
        instances = [
            {"id": i["id"], "inflight": self.inflight.get(i["id"], 0), "healthy": True}
            for a in self.table["apps"]
            for v in a["versions"]
            for i in v["instances"]
        ]
        return {
            "router_id": self.router_id,
            "generation": self.table["generation"],
            "time": time.time(),
            "apps": [{"app": self.app, "versions": versions}],
            "instances": instances,
        }


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (a deadline, never a timer)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
