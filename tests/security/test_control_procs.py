"""Real processes for the control-plane security tests: a ``skewless controller``
subprocess on 127.0.0.1 (its own process group, stopped in teardown), a dump of its
SQLite store, and a planner that never acts (for fuzzing the API without the engine
changing the store between two snapshots).

Imported by the other ``test_control_*`` / ``test_partial_*`` files (it holds no test
of its own except the planner's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from skewless.core.plan import FleetSnapshot, Plan

SRC = str(Path(__file__).resolve().parents[2] / "src")
HERE = str(Path(__file__).resolve().parent)
TOKEN = "control-test-token-0123456789"


def plan(snapshot: FleetSnapshot) -> Plan:
    """A planner that never acts: ``--planner test_control_procs:plan``."""
    return Plan()


def test_the_quiet_planner_never_acts() -> None:
    assert plan(None) == Plan()  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        time.sleep(0.05)


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, HERE]), **extra}
    for key in ("SKEWLESS_TOKEN", "SKEWLESS_API"):
        if key not in extra:
            out.pop(key, None)
    return out


class Controller:
    """``skewless controller`` on a free port of 127.0.0.1, in its own process group."""

    def __init__(
        self, tmp: Path, *args: str, token: str | None = TOKEN, quiet_planner: bool = False
    ) -> None:
        self.tmp = tmp
        self.db = tmp / "controller.db"
        self.url = f"http://127.0.0.1:{free_port()}"
        cmd = [
            sys.executable, "-m", "skewless", "controller",
            "--listen", self.url.removeprefix("http://"),
            "--store", f"sqlite:///{self.db}", "--state-dir", str(tmp / "state"),
            "--tick", "0.2", *args,
        ]  # fmt: skip
        if token is not None:
            cmd += ["--token", token]
        if quiet_planner:
            cmd += ["--planner", "test_control_procs:plan"]
        self.token = token
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            cmd,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_for("the controller to answer", self._up)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited {self.proc.returncode}: {self.lines}")
        return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the store (read-only connection)."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
                )
            ]
            return {
                n: sorted(map(tuple, con.execute(f'SELECT * FROM "{n}"')), key=repr) for n in names
            }
        finally:
            con.close()

    def views(self) -> dict[str, Any]:
        """What the API shows: apps, hosts (minus the clock-driven fields), events."""
        with httpx.Client(base_url=self.url, timeout=10) as c:
            apps = c.get("/v1/apps").json()
            hosts = c.get("/v1/hosts").json()
            events = c.get("/v1/events").json()
        for h in hosts.get("hosts", []) if isinstance(hosts, dict) else []:
            for key in ("alive", "last_report_age", "age"):
                h.pop(key, None)
        return {"apps": apps, "hosts": hosts, "events": events}
