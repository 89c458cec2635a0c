"""Process faults for the end-to-end tests and ``bench/faults.py``: a seeded random
schedule of kill -9s (an instance, an agent, the controller) run against a ``Fleet``
during a release, a watcher that samples the router's table and the machine's processes
while it runs, and the accounting of failed requests into *saveable* and *unsaveable*.

Unsaveable, by the router's contract (a request whose bytes left the router is never
resent): a request that failed with a connection cut or a 502 saying the instance closed
the connection, sent around the moment an instance was killed (``CUT_WINDOW`` either
side). Everything else that failed is a failure the system could have saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from .e2e_fleet import Fleet, processes_with
from .e2e_sessions import SessionLoad

Kind = Literal["instance", "agent", "controller"]
KINDS: tuple[Kind, ...] = ("instance", "agent", "controller")
CUT_WINDOW = 1.5
"""Seconds around an instance's kill -9 in which a cut request counts as unsaveable."""
_VERSION = re.compile(r"--version (\S+)")


@dataclass(frozen=True)
class Fault:
    at: float
    """Seconds after the release started."""
    kind: Kind
    pick: int
    """Chooses the victim among the candidates at that moment (a seeded number)."""


def schedule(seed: int, *, window: float, kinds: tuple[Kind, ...] = KINDS) -> list[Fault]:
    """One kill of each kind at a seeded random moment within ``window`` seconds."""
    rng = random.Random(seed)
    faults = [
        Fault(at=round(rng.uniform(0.3, window), 2), kind=k, pick=rng.randrange(1 << 30))
        for k in kinds
    ]
    return sorted(faults, key=lambda f: f.at)


@dataclass(frozen=True)
class Kill:
    at: float
    """time.time() of the kill."""
    fault: Fault
    target: str
    pid: int


def instance_pids(fleet: Fleet) -> dict[int, str]:
    """pid -> version of every app instance of ``fleet`` running now."""
    out: dict[int, str] = {}
    for pid, cmd in processes_with(fleet.marker).items():
        argv = cmd.split()
        # The app itself (python e2e_tinyapp.py ...), not a `skewless deploy` whose
        # --command names it.
        if len(argv) > 1 and argv[1].endswith("e2e_tinyapp.py") and (m := _VERSION.search(cmd)):
            out[pid] = m.group(1)
    return out


class FaultRunner:
    """Runs a schedule against a fleet in a thread, from ``start()`` on."""

    def __init__(self, fleet: Fleet, faults: list[Fault]) -> None:
        self.fleet = fleet
        self.faults = faults
        self.kills: list[Kill] = []
        self.skipped: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        for fault in self.faults:
            if self._stop.wait(max(0.0, self.started + fault.at - time.monotonic())):
                return
            self._kill(fault)

    def _kill(self, fault: Fault) -> None:
        if fault.kind == "instance":
            candidates = sorted(instance_pids(self.fleet).items())
            targets = [(f"instance {v} pid {pid}", pid) for pid, v in candidates]
        else:
            parts = self.fleet.parts()
            names = (
                ["controller"]
                if fault.kind == "controller"
                else sorted(n for n in parts if n not in ("controller", "router"))
            )
            targets = [(n, int(parts[n]["pid"])) for n in names if parts[n].get("pid")]
        if not targets:
            self.skipped.append(f"{fault.kind} at {fault.at}: nothing to kill")
            return
        target, pid = targets[fault.pick % len(targets)]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.skipped.append(f"{target} at {fault.at}: already gone")
            return
        self.kills.append(Kill(at=time.time(), fault=fault, target=target, pid=pid))


@dataclass
class Watch:
    """Samples, every ~0.2 s: the router's table (ready instances per version) and the
    app processes per version on the machine."""

    admin: str
    fleet: Fleet
    load: SessionLoad
    desired: int
    samples: int = 0
    floor_breaks: list[str] = field(default_factory=list)
    too_many: list[str] = field(default_factory=list)
    max_processes: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(0.2):
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    self._table(http.get(f"{self.admin}/v1/state").json())
                per_version = Counter(instance_pids(self.fleet).values())
                for v, n in per_version.items():
                    self.max_processes[v] = max(self.max_processes[v], n)
                    if n > self.desired:
                        self.too_many.append(f"{n} processes of {v} (desired {self.desired})")
                self.samples += 1

    def _table(self, state: dict[str, Any]) -> None:
        ready = Counter(
            i["version"] for i in state.get("instances") or [] if i.get("state") == "ready"
        )
        for app in state.get("apps") or []:
            for v in app.get("versions") or []:
                name = v["version"]
                if v.get("state") == "retired":
                    continue
                # A version with open sessions pinned to it keeps a ready instance.
                if self.load.open_sessions_on(name) and ready[name] < 1:
                    self.floor_breaks.append(
                        f"{time.time():.2f}: {name} ({v.get('state')}) has open sessions "
                        "and no ready instance in the router's table"
                    )


@dataclass(frozen=True)
class Failures:
    saveable: list[str]
    unsaveable: list[str]


def classify(load: SessionLoad, kills: list[Kill]) -> Failures:
    instance_kills = [k.at for k in kills if k.fault.kind == "instance"]
    saveable: list[str] = []
    unsaveable: list[str] = []
    for s in load.snapshot():
        for a in s.answers:
            if a.status == 200:
                continue
            line = f"session {s.id} at {a.sent:.2f}: {a.status} {a.error or ''}"
            cut = a.status is None or (
                a.status == 502 and "closed the connection" in (a.error or "")
            )
            near = any(abs(a.sent - t) <= CUT_WINDOW for t in instance_kills)
            (unsaveable if cut and near else saveable).append(line)
    return Failures(saveable=saveable, unsaveable=unsaveable)


def duplicate_actions(api: str, app: str) -> tuple[int, list[str]]:
    """(actions seen, keys recorded as taken more than once) from the controller's events."""
    seen: Counter[tuple[Any, Any]] = Counter()
    after = 0
    with httpx.Client(timeout=10) as http:
        while True:
            events = http.get(f"{api}/v1/events", params={"app": app, "after": after}).json()
            batch = events.get("events") or []
            if not batch:
                break
            for e in batch:
                after = max(after, int(e["id"]))
                if e.get("kind") != "action":
                    continue
                data = e.get("data") if isinstance(e.get("data"), dict) else e
                seen[(data.get("rollout_id"), data.get("key"))] += 1
    dups = [f"{k} x{n}" for k, n in seen.items() if n > 1]
    return sum(seen.values()), dups


def rollout_end(fleet: Fleet, app: str, to: str) -> dict[str, Any] | None:
    """The rollout to ``to`` once it ended (None while it runs or the API is down)."""
    try:
        r = fleet.status(app).get("rollout") or {}
    except (httpx.HTTPError, ValueError):
        return None
    if r.get("to") == to and r.get("state") in ("succeeded", "failed", "rolled_back", "aborted"):
        return dict(r)
    return None


def admin_url(fleet: Fleet) -> str:
    return str(json.loads((fleet.state / "up.json").read_text())["admin"])
