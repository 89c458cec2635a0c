"""The thin commands against a real controller process (no agents, no router: the
rollout cannot make progress, which is what lets us pause, resume and abort it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skewless.commands import deploy, events, hosts, releases, status
from skewless.commands.action import run_action

SRC = str(Path(__file__).resolve().parents[2] / "src")
TOKEN = "t0ken-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "skewless", "controller", "--listen", f"127.0.0.1:{port}",
         "--store", f"sqlite:///{tmp_path / 'c.db'}", "--state-dir", str(tmp_path / "c")],
        env={**os.environ, "PYTHONPATH": SRC, "SKEWLESS_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/hosts", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "controller did not start"
            time.sleep(0.1)
        monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("SKEWLESS_API", url)
        monkeypatch.setenv("SKEWLESS_TOKEN", TOKEN)
        monkeypatch.chdir(tmp_path)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def status_json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert status.main(["shop", "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_deploy_status_and_rollout_controls(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["shop", "v1", "--command", "python app.py --port {port}", "--instances", "2",
            "--session-idle-timeout", "3", "--strategy", "side-by-side"]  # fmt: skip
    assert deploy.main(argv) == 0
    assert "deploying shop v1 (side-by-side)" in capsys.readouterr().out

    got = status_json(capsys)
    assert got["app"] == "shop"
    (v1,) = got["versions"]  # type: ignore[misc]
    assert {"version", "state", "weight", "instances"} <= set(v1)
    assert v1["version"] == "v1" and v1["state"] == "live"
    rollout = got["rollout"]
    assert isinstance(rollout, dict)
    assert {"state", "strategy", "to", "reason"} <= set(rollout)
    assert rollout["to"] == "v1" and rollout["strategy"] == "side-by-side"

    # A second deploy while this one runs is refused with the controller's reason.
    assert deploy.main(["shop", "v2", "--command", "python app.py --port {port}"]) == 1
    assert "has a rollout in progress" in capsys.readouterr().err

    assert run_action("pause", ["shop"]) == 0
    assert "paused" in capsys.readouterr().out
    assert status_json(capsys)["rollout"]["state"] == "paused"  # type: ignore[index]
    assert run_action("resume", ["shop"]) == 0
    capsys.readouterr()
    assert status_json(capsys)["rollout"]["state"] in ("pending", "progressing")  # type: ignore[index]
    assert run_action("abort", ["shop"]) == 0
    capsys.readouterr()
    assert status_json(capsys)["rollout"]["state"] == "aborted"  # type: ignore[index]
    assert run_action("resume", ["shop"]) == 1
    assert "no paused rollout" in capsys.readouterr().err

    assert releases.main(["shop"]) == 0
    assert "python app.py --port {port}" in capsys.readouterr().out
    assert events.main(["shop"]) == 0
    out = capsys.readouterr().out
    assert "deploy shop v1" in out and "aborted" in out
    assert hosts.main([]) == 0
    assert "no hosts have reported yet" in capsys.readouterr().out
    assert status.main([]) == 0
    assert "shop" in capsys.readouterr().out


def test_errors_from_the_real_controller(
    api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert status.main(["nope"]) == 1
    assert capsys.readouterr().err == "skewless status: unknown app 'nope': deploy it first (404)\n"
    monkeypatch.setenv("SKEWLESS_TOKEN", "wrong")
    assert deploy.main(["shop", "v1", "--command", "a {port}"]) == 1
    err = capsys.readouterr().err
    assert "controller refused POST /v1/apps/shop/deploy (401" in err
    assert status.main([]) == 0  # GETs from loopback need no token
    assert "no apps yet" in capsys.readouterr().out
    monkeypatch.setenv("SKEWLESS_TOKEN", TOKEN)
    assert run_action("rollback", ["shop"]) == 1
    assert "unknown app 'shop'" in capsys.readouterr().err


def test_deploy_wait_gives_up_at_its_timeout(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    # No hosts: the rollout cannot progress; --timeout ends the wait, not the rollout.
    argv = ["shop", "v1", "--command", "a {port}", "--wait", "--timeout", "1"]
    assert deploy.main(argv) == 3
    err = capsys.readouterr().err
    assert "the rollout goes on (skewless status shop)" in err
    assert status_json(capsys)["rollout"]["state"] in ("pending", "progressing")  # type: ignore[index]


def test_every_deploy_flag_is_accepted_by_the_controller(
    api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "shop", "v1", "--command", "python app.py --port {port}", "--health", "/up",
        "--instances", "4", "--strategy", "rolling", "--batch", "25%",
        "--session-idle-timeout", "3", "--session-max-lifetime", "60", "--capacity", "20",
        "--smoke", "/", "--max-unavailable", "1", "--max-surge", "1",
        "--steps", "0.1,0.5,1", "--env", "A=1", "--drain-timeout", "5",
    ]  # fmt: skip
    assert deploy.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert releases.main(["shop", "--json"]) == 0
    (release,) = json.loads(capsys.readouterr().out)["releases"]
    spec = release["spec"]
    assert spec["command"] == ["python", "app.py", "--port", "{port}"]
    assert spec["env"] == {"A": "1"}
    assert spec["health"]["path"] == "/up"
    assert spec["smoke"] == [{"path": "/", "status": 200}]
    assert spec["capacity"] == 20
    assert spec["drain_timeout"] == 5
    rollout = status_json(capsys)["rollout"]
    assert isinstance(rollout, dict)
    assert rollout["strategy"] == "rolling"
    assert rollout["steps"] == [0.1, 0.5, 1.0]
    assert rollout["instances"] == 4


def test_events_follow_prints_new_events_until_interrupted(
    api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "skewless", "events", "shop", "--follow"],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert deploy.main(["shop", "v1", "--command", "a {port}"]) == 0
        assert follower.stdout is not None
        line = follower.stdout.readline()  # blocks until the event arrives (or EOF)
        assert "deploy shop v1" in line
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130
        assert follower.stderr is not None
        assert "Traceback" not in follower.stderr.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(follower.pid, signal.SIGKILL)
        follower.wait(timeout=10)
        for stream in (follower.stdout, follower.stderr):
            if stream:
                stream.close()
