"""Invariant 5: a controller killed with kill -9 at random points resumes its rollouts from
the store and takes no action twice. A real controller process (stand-in planner), fake
agents running real HTTP instances, a fake router; the controller is killed several times
while two rollouts run, and restarted on the same port each time."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from controller_fakes import FakeAgent, FakeRouter, wait_for

SRC = Path(__file__).resolve().parents[2] / "src"
HERE = Path(__file__).resolve().parent
TOKEN = "kill9-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Controller:
    def __init__(self, state: Path, planner: str) -> None:
        self.state = state
        self.planner = planner
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}", "SKEWLESS_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skewless",
                "controller",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--state-dir",
                str(self.state),
                "--planner",
                self.planner,
                "--tick",
                "0.3",
            ],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        self.port = int(line.split("http://127.0.0.1:")[1].split()[0])
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._healthy, what="controller up")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()


@pytest.fixture(params=["controller_fakes:plan_one", "skewless.core.planner:plan"])
def controller(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Controller]:
    c = Controller(tmp_path / "state", request.param)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _get(c: Controller, path: str, **params: Any) -> Any:
    def once() -> Any:
        try:
            r = httpx.get(f"{c.url}{path}", params=params, timeout=2)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    return wait_for(once, what=f"GET {path}")


def _actions(c: Controller) -> int:
    return len([e for e in _get(c, "/v1/events", app="shop")["events"] if e["kind"] == "action"])


def _recorded(c: Controller, prefix: str) -> str | None:
    """A journal key recorded but not yet done (read straight from the store)."""
    db = sqlite3.connect(f"file:{c.state / 'controller.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT key FROM journal WHERE status = 'recorded' AND key LIKE ?", (prefix + "%",)
        ).fetchone()
    finally:
        db.close()
    return str(row[0]) if row else None


def _finished(c: Controller, version: str) -> bool:
    rollout = _get(c, "/v1/apps/shop")["rollout"]
    return bool(rollout["to"] == version and rollout["state"] == "succeeded")


def test_kill9_at_random_points_resumes_and_takes_no_action_twice(controller: Controller) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"kill -9 test seed {seed}")
    c = controller
    gate = threading.Event()  # smoke checks hang until the gate opens
    agents = [
        FakeAgent(c.url, f"h{i}", token=TOKEN, poll_wait=1.0, smoke_gate=gate) for i in (1, 2)
    ]
    router = FakeRouter(c.url, token=TOKEN, poll_wait=1.0)
    kills = mid_rollout = 0
    smoke_key = None
    try:
        for part in (*agents, router):
            part.__enter__()
        wait_for(lambda: len(_get(c, "/v1/hosts")["hosts"]) == 2, what="hosts")
        for version in ("v1", "v2"):
            body = {
                "version": version,
                "command": ["app", "--port", "{port}"],
                "instances": 2,
                "session": {"idle_timeout": 0.3},
                "health": {"timeout": 20},  # a held smoke check must outlast a slow test
            }
            r = httpx.post(f"{c.url}/v1/apps/shop/deploy", json=body, headers=AUTH, timeout=5)
            assert r.status_code == 201, r.text
            # first a kill in the middle of a smoke check (journal says "recorded"): the
            # restarted controller must leave it to the planner, which checks again
            if version == "v2":
                gate.clear()
                smoke_key = wait_for(lambda: _recorded(c, "smoke:"), what="a smoke check under way")
                c.kill9()
                kills += 1
                mid_rollout += 1
                c.start()
            gate.set()
            # kill after each of the first few actions (plus a random few ms), restart
            for _ in range(4):
                if _finished(c, version):
                    break
                target = _actions(c) + 1
                wait_for(
                    lambda t=target, v=version: _actions(c) >= t or _finished(c, v),
                    what="an action before the kill",
                )
                time.sleep(rng.uniform(0, 0.01))  # a random point in what follows
                mid_rollout += not _finished(c, version)
                c.kill9()
                kills += 1
                c.start()
            wait_for(lambda v=version: _finished(c, v), what=f"{version} rollout after kills")
        status = wait_for(
            lambda: (s := _get(c, "/v1/apps/shop"))["versions"][0]["instances"] == [] and s,
            what="v1 stopped",
        )
    finally:
        router.__exit__()
        for a in agents:
            a.__exit__()
    assert kills >= 2
    assert mid_rollout >= 2, "the kills should land while rollouts run"
    v1, v2 = status["versions"]
    assert (v1["state"], v2["state"], v2["weight"]) == ("retired", "live", 1.0)
    assert sorted(i["host"] for i in v2["instances"]) == ["h1", "h2"]

    db = sqlite3.connect(c.state / "controller.db")
    try:
        journal = db.execute("SELECT rollout_id, key, status FROM journal").fetchall()
        taken = [
            (json.loads(d)["rollout_id"], json.loads(d)["key"])
            for (d,) in db.execute("SELECT data FROM events WHERE kind = 'action'")
        ]
        recovered_events = db.execute("SELECT data FROM events WHERE kind = 'recovered'").fetchall()
    finally:
        db.close()
    recovered = [(json.loads(d)["key"], json.loads(d)["outcome"]) for (d,) in recovered_events]
    # the interrupted smoke check was not marked taken; it was taken after the restart
    (outcome,) = [json.loads(d) for (d,) in recovered_events if json.loads(d)["key"] == smoke_key]
    assert outcome["outcome"] == "abandoned"
    assert any(k == smoke_key for _, k in taken)
    print(f"kills mid-rollout: {mid_rollout}, recovered after restarts: {recovered}")
    # every action was journaled, none is left half-taken, none was taken twice
    assert all(status in ("done", "abandoned") for _, _, status in journal)
    assert len(taken) == len(set(taken)), "an action was taken twice"
    done = {(r, k) for r, k, s in journal if s == "done"}
    assert set(taken) <= done
    # agents saw each instance asked to run once, then to stop, never to run again
    for agent in agents:
        gens = [g for g, _ in agent.seen]
        assert gens == sorted(gens) and len(gens) == len(set(gens))
        history: dict[str, list[str]] = {}
        for _, instances in agent.seen:
            for iid, desired in instances.items():
                if not history.get(iid) or history[iid][-1] != desired:
                    history.setdefault(iid, []).append(desired)
        for iid, changes in history.items():
            assert changes in (["running"], ["running", "stopped"]), (iid, changes)
    assert router.generations == sorted(router.generations)
