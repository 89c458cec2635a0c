"""Partial deploy: an agent that says yes but runs the old release.

The liar is a real process speaking the agent protocol of BRIEF.md over HTTP (run this
file as a script): it long-polls its desired state, "starts" every instance it is asked
for, and reports each one ``ready`` and healthy at its own HTTP address (which answers
200 to everything, smoke checks included), but with ``version`` = the old version,
whatever it was asked to run. A real controller (real planner) must not complete the
release: its status and events name the host and both versions, and once the progress
deadline passes the rollout fails with that reason. Never a silent success.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_control_procs import TOKEN, Controller, env, wait_for

# ---- the liar (runs as a subprocess) ------------------------------------------------------


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def lie(controller: str, host_id: str, token: str, runs: str, stop_after: float) -> None:
    """Report every asked instance ``ready`` running ``runs`` (until ``stop_after`` s)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    headers = {"Authorization": f"Bearer {token}"}
    desired: dict[str, Any] = {"generation": 0, "instances": []}
    started: dict[str, float] = {}
    deadline = time.monotonic() + stop_after
    with httpx.Client(base_url=controller, headers=headers, timeout=10) as c:
        while time.monotonic() < deadline:
            r = c.get(
                f"/v1/hosts/{host_id}/desired",
                params={"generation": desired["generation"], "wait": 0.3},
            )
            if r.status_code == 200:
                desired = r.json()
            now = time.time()
            instances = []
            for i, want in enumerate(desired["instances"]):
                running = want.get("desired", "running") == "running"
                started.setdefault(want["id"], now)
                instances.append(
                    {
                        "id": want["id"],
                        "app": want["app"],
                        "version": runs,  # the lie: the old release, whatever was asked
                        "state": "ready" if running else "stopped",
                        "address": address if running else None,
                        "pid": 100000 + i if running else None,
                        "restarts": 0,
                        "health": {"ok": running, "status": 200, "at": now, "error": None},
                        "reason": None,
                    }
                )
            report = {
                "host_id": host_id,
                "slots": 4,
                "generation": desired["generation"],
                "instances": instances,
            }
            c.post(f"/v1/hosts/{host_id}/report", json=report).raise_for_status()
    server.shutdown()


# ---- the test -----------------------------------------------------------------------------


APP = "shop"
COMMAND = ["python", "-m", "shop", "--port", "{port}"]


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    c = Controller(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def liar(controller: Controller) -> Iterator[None]:
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(
        [
            sys.executable, __file__, "--controller", controller.url, "--host-id", "h1",
            "--token", TOKEN, "--runs", "v1", "--stop-after", "100",
        ],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def status(controller: Controller) -> dict[str, Any]:
    return httpx.get(f"{controller.url}/v1/apps/{APP}", timeout=10).json()


def events(controller: Controller) -> list[dict[str, Any]]:
    r = httpx.get(f"{controller.url}/v1/events", params={"app": APP}, timeout=10)
    return list(r.json()["events"])


def deploy(controller: Controller, ver: str, deadline: float, strategy: str) -> None:
    body = {
        "version": ver,
        "command": COMMAND,
        "instances": 1,
        "strategy": strategy,
        "progress_deadline": deadline,
        "session": {"idle_timeout": 1, "max_lifetime": 2},
    }
    if strategy == "rolling":
        body["max_surge"] = 1  # room for the new instance beside the old one
    r = httpx.post(
        f"{controller.url}/v1/apps/{APP}/deploy",
        json=body,
        headers=controller.headers(),
        timeout=10,
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("strategy", ["side-by-side", "rolling", "surge"])
def test_an_agent_that_runs_the_old_release_blocks_completion_with_a_clear_reason(
    controller: Controller, liar: None, strategy: str
) -> None:
    # v1: the liar tells the truth (it runs v1 and was asked for v1): the release completes.
    deploy(controller, "v1", deadline=60, strategy=strategy)
    wait_for(
        "v1 to be released",
        lambda: (status(controller)["rollout"] or {}).get("state") == "succeeded",
        timeout=40,
    )
    # v2: the liar reports its v2 instance ready... running v1.
    deploy(controller, "v2", deadline=6, strategy=strategy)
    words = ("h1", "v1", "v2")

    def says_why() -> dict[str, Any] | None:
        rollout = status(controller)["rollout"]
        reason = rollout.get("reason") or ""
        return rollout if all(w in reason for w in words) and "runs" in reason else None

    waiting = wait_for("status to name the host and both versions", says_why, timeout=30)
    assert waiting["to"] == "v2"
    assert waiting["state"] in ("progressing", "pending", "failed"), waiting
    text = [e["message"] for e in events(controller) if e.get("kind") == "waiting"]
    assert any(all(w in m for w in words) and "runs" in m for m in text), text

    def ended() -> dict[str, Any] | None:
        rollout = status(controller)["rollout"]
        return rollout if rollout["state"] not in ("pending", "progressing", "paused") else None

    final = wait_for("the progress deadline to end the rollout", ended, timeout=40)
    assert final["state"] == "failed", final  # never a silent success
    assert "progress deadline" in final["reason"], final
    assert all(w in final["reason"] for w in words), final
    kinds = [(e["kind"], e["message"]) for e in events(controller)]
    assert any(k == "rollout" and "failed" in m and "h1" in m for k, m in kinds), kinds
    assert not any(k == "rollout" and "succeeded" in m and "v2" in m for k, m in kinds), kinds
    # v2 never took a new session: the table still sends everyone to v1.
    table = httpx.get(f"{controller.url}/v1/routes", timeout=10).json()
    weights = {v["version"]: v["weight"] for a in table["apps"] for v in a["versions"]}
    assert weights.get("v2", 0.0) == 0.0 and weights["v1"] == 1.0, weights
    v1 = next(v for v in status(controller)["versions"] if v["version"] == "v1")
    assert v1["state"] == "live" and any(i["state"] == "ready" for i in v1["instances"]), v1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="An agent that lies about the version it runs.")
    p.add_argument("--controller", required=True)
    p.add_argument("--host-id", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--runs", required=True, help="the version it reports, whatever was asked")
    p.add_argument("--stop-after", type=float, default=100.0)
    a = p.parse_args()
    lie(a.controller, a.host_id, a.token, a.runs, a.stop_after)
