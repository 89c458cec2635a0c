"""`skewless demo --exit --json --compare` as a test (issue 5): a real local fleet
(`skewless up`: controller, router, 4 agents), the wizard v1, simulated users, v2 rolling
then v3 side-by-side, and the control run without pins. Small numbers; one fleet."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
IDLE = 4.0


def _free() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_demo_releases_have_no_failures_and_no_mixed_sessions_unless_unpinned(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    argv = [
        sys.executable,
        "-m",
        "skewless",
        "demo",
        "--exit",
        "--json",
        "--compare",
        "--users",
        "6",
        "--think",
        "0.1",
        "--idle-timeout",
        str(IDLE),
        "--http",
        _free(),
        "--api",
        _free(),
        "--state",
        str(state),
        "--release-timeout",
        "80",
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "SKEWLESS_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=110)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = _processes_mentioning(str(state))
        for pid in left:  # only if the demo failed to stop its fleet
            os.kill(pid, signal.SIGKILL)
    assert left == [], "the demo left fleet processes running"
    assert proc.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert result["ok"] is True

    rolling, side = result["releases"]
    assert (rolling["version"], rolling["strategy"]) == ("v2", "rolling")
    assert (side["version"], side["strategy"]) == ("v3", "side-by-side")
    for r in result["releases"]:
        assert r["rollout_state"] == "succeeded", r
        assert r["requests"] > 0 and r["sessions"] > 0
        assert r["failed_requests"] == 0, r["errors_by_status"]
        assert r["mixed_sessions"] == 0
        # Retired only after its sessions went idle: no request reached the old version
        # for at least the idle timeout before it was retired.
        assert r["retire_reason"] == "sessions_idle"
        assert r["old_idle_before_retire"] >= IDLE
        assert r["min_ready_instances"] >= r["floor"] == 3
        assert r["extra_hosts"] == 0
    assert rolling["peak_extra_processes"] == 0  # rolling replaces in place
    assert side["peak_extra_processes"] > 0  # side-by-side pays with processes, not hosts

    # The control run: the same kinds of release with session.pin = false.
    control = result["control"]
    assert [(r["version"], r["strategy"], r["pinned"]) for r in control] == [
        ("v4", "rolling", False),
        ("v5", "side-by-side", False),
    ]
    assert sum(r["mixed_sessions"] for r in control) > 0
    statuses = {s for r in control for s in r["errors_by_status"]}
    assert statuses and statuses <= {"409", "422"}
