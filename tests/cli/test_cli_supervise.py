"""supervise_local with real processes: an orphaned instance (its agent gone) is still
found and stopped by the subreaper, and ``up`` refuses a taken port before starting
anything."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

# The "instance": sleeps until killed, in a session of its own.
INSTANCE = "import time\nwhile True:\n    time.sleep(1)\n"

# The "agent": starts the instance, prints its pid and exits (orphaning it).
AGENT = f"""
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", {INSTANCE!r}], start_new_session=True)
print(p.pid, flush=True)
"""

# A stand-in for `up`: becomes a subreaper, runs the agent, then stops every descendant.
UP = f"""
import os, subprocess, sys, time
from skewless.supervise_local import become_subreaper, descendants, kill_descendants
assert become_subreaper()
agent = subprocess.Popen([sys.executable, "-c", {AGENT!r}], stdout=subprocess.PIPE, text=True)
instance = int(agent.stdout.readline())
agent.wait()
print(instance, flush=True)
deadline = time.monotonic() + 10
while instance not in descendants(os.getpid()) and time.monotonic() < deadline:
    time.sleep(0.05)
print("adopted" if instance in descendants(os.getpid()) else "lost", flush=True)
found = kill_descendants(grace=5)
print("found", *found, flush=True)
print("left", *descendants(os.getpid()), flush=True)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper is Linux only")
def test_orphaned_instance_is_adopted_and_stopped() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", UP],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    instance = None
    try:
        out, _ = proc.communicate(timeout=60)
        lines = out.splitlines()
        instance = int(lines[0])
        assert lines[1] == "adopted"
        assert lines[2].split()[1:] == [str(instance)]
        assert lines[3] == "left"
        assert not alive(instance)
    finally:
        with_kill = [proc.pid] + ([instance] if instance else [])
        for pid in with_kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_up_refuses_a_taken_port_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken, socket.socket() as other:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other.bind(("127.0.0.1", 0))
        api_port = other.getsockname()[1]
        other.close()
        done = subprocess.run(
            [sys.executable, "-m", "skewless", "up", "--hosts", "1",
             "--http", f"127.0.0.1:{port}", "--api", f"127.0.0.1:{api_port}", "--state", str(tmp_path / "s")],
            env={**os.environ, "PYTHONPATH": SRC, "SKEWLESS_HOME": str(tmp_path / "home")},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr == (
        f"skewless up: --http 127.0.0.1:{port}: port {port} is taken; stop what listens "
        "there or choose another with --http\n"
    )
    assert not (tmp_path / "s" / "logs").exists()
    assert not (tmp_path / "home" / "current.json").exists()
