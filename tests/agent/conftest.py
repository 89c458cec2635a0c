"""Harness for the agent's integration tests: a real agent process, real instances.

Every instance a test asks for carries ``SKEWLESS_TEST_TAG`` (unique per test) in its
environment, which its children inherit. Teardown kills the agent's process group and
then every process whose environment holds the tag: nothing survives a test, whether it
passed or not, and tests can ask "is anything of this instance still running?".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).with_name("app_fixture.py")
DEADLINE = 30.0


def tagged_pids(tag: str, instance: str | None = None) -> list[int]:
    """Live processes whose environment contains ``SKEWLESS_TEST_TAG=tag`` (and, if given,
    ``TEST_INSTANCE=instance``)."""
    needle = f"SKEWLESS_TEST_TAG={tag}".encode()
    which = f"TEST_INSTANCE={instance}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = environ.split(b"\0")
        if instance is not None and which not in fields:
            continue
        if needle in fields and stat[stat.rindex(")") + 2] != "Z":
            pids.append(int(entry.name))
    return pids


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


class Agent:
    """One ``skewless agent`` process (restartable) on a state dir of the test."""

    wait_for = staticmethod(wait_for)

    def __init__(self, tmp: Path, tag: str) -> None:
        self.tmp = tmp
        self.tag = tag
        self.state_dir = tmp / "state"
        self.desired_path = tmp / "desired.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = tmp / "agent.log"

    def instance(self, n: int, version: str, *flags: str, **fields: Any) -> dict[str, Any]:
        env = {"SKEWLESS_TEST_TAG": self.tag, "TEST_INSTANCE": f"{version}/{n}"}
        env.update(fields.pop("env", {}))
        spec = {
            "id": f"h1/shop/{version}/{n}",
            "app": "shop",
            "version": version,
            "command": [
                sys.executable,
                str(FIXTURE),
                "--port",
                "{port}",
                "--version",
                version,
                *list(flags),
            ],
            "env": env,
            "health": {"path": "/healthz", "timeout": 1},
            "drain_timeout": 5,
            "start_timeout": 20,
        }
        spec.update(fields)
        return spec

    def write_desired(self, generation: int, *instances: dict[str, Any]) -> None:
        tmp = self.desired_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": generation, "instances": list(instances)}))
        os.replace(tmp, self.desired_path)

    def start(
        self,
        *extra: str,
        source: tuple[str, ...] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        assert self.proc is None or self.proc.poll() is not None
        (self.state_dir / "agent.json").unlink(missing_ok=True)
        if source is None:
            source = ("--desired", str(self.desired_path))
        environ = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        environ.pop("SKEWLESS_TOKEN", None)
        environ.update(env or {})
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "skewless",
                    "agent",
                    "--listen",
                    "127.0.0.1:0",
                    "--state-dir",
                    str(self.state_dir),
                    "--host-id",
                    "h1",
                    *source,
                    *extra,
                ],
                env=environ,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        proc = self.proc

        def ready() -> str | None:
            assert proc.poll() is None, f"agent exited: {self.log.read_text()}"
            try:
                info = json.loads((self.state_dir / "agent.json").read_text())
            except (OSError, ValueError):
                return None
            return info["listen"] if info.get("pid") == proc.pid else None

        self.url = "http://" + wait_for("the agent to listen", ready)

    def status(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/v1/status", timeout=5)
        resp.raise_for_status()
        return resp.json()

    def instances(self) -> dict[str, dict[str, Any]]:
        return {i["id"]: i for i in self.status()["instances"]}

    def wait_state(self, ident: str, state: str, **match: Any) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            inst = self.instances().get(ident)
            if inst and inst["state"] == state and all(inst[k] == v for k, v in match.items()):
                return inst
            return None

        return wait_for(f"{ident} to be {state} {match or ''}", check)

    def pids(self, instance: str | None = None) -> list[int]:
        """Live processes of this test (of one instance, given as ``VERSION/N``)."""
        return tagged_pids(self.tag, instance)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    tag = uuid.uuid4().hex
    a = Agent(tmp_path, tag)
    try:
        yield a
    finally:
        a.kill()
        for pid in tagged_pids(tag):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for("the test's processes to be gone", lambda: not tagged_pids(tag), 10)
