"""End to end, all real: a controller, a router (--controller) and two agents
(--controller --host-id), one slot each, and a tiny app. A rolling release from v1 to v2
under concurrent multi-request sessions: no failed request, no session sees two versions,
v1 retires once its sessions are idle, and v2 ends on both hosts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from controller_fakes import wait_for

SRC = Path(__file__).resolve().parents[2] / "src"

APP = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, version = int(sys.argv[1]), sys.argv[2]


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = version.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "PYTHONPATH": str(SRC), "SKEWLESS_HOME": str(tmp / "home")}
        self.env.pop("SKEWLESS_TOKEN", None)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed by the process end)
        proc = subprocess.Popen(
            [sys.executable, "-m", "skewless", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self, extra_pids: list[int]) -> None:
        for proc in reversed(self.procs):  # agents stop their instances on SIGTERM
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for pid in extra_pids:  # instances an agent could not stop
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _listening(procs: Procs, name: str) -> str:
    def find() -> str | None:
        for line in procs.log(name).splitlines():
            if "listening on http://" in line:
                return line.split("listening on ")[1].split()[0].rstrip(",")
        return None

    return str(wait_for(find, what=f"{name} listening"))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    procs = Procs(tmp_path)
    pids: list[int] = []
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "keys.txt").write_text("k1:" + "s" * 32 + "\n")
    try:
        procs.start(
            "controller",
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path / "c"),
            "--tick",
            "0.2",
        )
        api = _listening(procs, "controller")
        procs.start(
            "router",
            "router",
            "--listen",
            "127.0.0.1:0",
            "--controller",
            api,
            "--id",
            "r1",
            "--keys",
            str(tmp_path / "keys.txt"),
            "--cache",
            str(tmp_path / "routes.json"),
            "--report-interval",
            "0.5",
        )
        http = _listening(procs, "router")
        for host in ("h1", "h2"):
            procs.start(
                host,
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--controller",
                api,
                "--host-id",
                host,
                "--slots",
                "1",
                "--state-dir",
                str(tmp_path / host),
                "--stop-instances-on-exit",
                "--report-interval",
                "0.5",
            )
        with httpx.Client(base_url=api, timeout=10) as client:
            wait_for(lambda: len(client.get("/v1/hosts").json()["hosts"]) == 2, what="agents")
            yield {
                "api": api,
                "http": http,
                "client": client,
                "app": str(tmp_path / "app.py"),
                "pids": pids,
            }
    finally:
        procs.stop(pids)


def _deploy(f: dict[str, Any], version: str) -> None:
    body = {
        "version": version,
        "command": [sys.executable, f["app"], "{port}", version],
        "health": {"path": "/healthz", "timeout": 5},
        "instances": 2,
        "strategy": "rolling",
        "drain_timeout": 5,
        "session": {"idle_timeout": 5.0},
    }
    r = f["client"].post("/v1/apps/shop/deploy", json=body)
    assert r.status_code == 201, r.text


def _status(f: dict[str, Any]) -> dict[str, Any]:
    s = f["client"].get("/v1/apps/shop").json()
    f["pids"].extend(i["pid"] for v in s["versions"] for i in v["instances"] if i.get("pid"))
    return s


class Sessions:
    """Users walking 4-page flows through the router, each with its own cookie jar."""

    def __init__(self, url: str, users: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.mixed: list[list[str]] = []
        self.flows = 0
        self.versions: set[str] = set()
        self.threads = [threading.Thread(target=self._user, daemon=True) for _ in range(users)]

    def __enter__(self) -> Sessions:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _user(self) -> None:
        while not self.stop.is_set():
            seen: list[str] = []
            with httpx.Client(base_url=self.url, timeout=10) as c:
                for page in range(4):
                    try:
                        r = c.get(f"/signup/{page}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:100]}")
                        continue
                    seen.append(r.text)
                    if "skewless-repinned" in r.headers:
                        seen = [r.text]
            self.flows += 1
            self.versions.update(seen)
            if len(set(seen)) > 1:
                self.mixed.append(seen)


def test_rolling_release_under_sessions_has_no_failed_request(fleet: dict[str, Any]) -> None:
    _deploy(fleet, "v1")
    wait_for(lambda: _status(fleet)["rollout"]["state"] == "succeeded", 60, what="v1 live")
    with httpx.Client(base_url=fleet["http"], timeout=10) as c:
        wait_for(lambda: c.get("/").text == "v1", 30, what="router serves v1")
    with Sessions(fleet["http"]) as users:
        wait_for(lambda: users.flows >= 4, 30, what="sessions under way")
        _deploy(fleet, "v2")
        wait_for(
            lambda: _status(fleet)["rollout"]["state"] in ("succeeded", "failed"),
            90,
            what="v2 rollout",
        )
        status = wait_for(
            lambda: (
                (s := _status(fleet))["versions"][0]["state"] == "retired"
                and len(s["versions"][1]["instances"]) == 2
                and s
            ),
            90,
            what="v1 retired, v2 on both hosts",
        )
        flows_at_end = users.flows
        wait_for(lambda: users.flows >= flows_at_end + 4, 30, what="sessions after the release")
    assert status["rollout"]["state"] == "succeeded", status["rollout"]
    v1, v2 = status["versions"]
    assert sorted(i["host"] for i in v2["instances"]) == ["h1", "h2"]
    assert v1["instances"] == []
    assert users.failures == [], users.failures[:5]
    assert users.mixed == [], users.mixed[:5]
    assert users.versions == {"v1", "v2"}
