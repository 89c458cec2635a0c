"""Real processes for the demo tests: wizard instances and the round-robin proxy.

Each process is started in its own session and killed as a process group by the fixture,
pass or fail. Its first stdout line names the address it listens on (port 0: any free).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
HERE = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def _read_address(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            break
        if proc.poll() is not None:
            break
    match = re.search(r"http://(127\.0\.0\.1:\d+)", line)
    if match is None:
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise AssertionError(f"process did not announce its address: {line!r} {err}")
    return match.group(1)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


Spawn = Callable[..., str]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """``spawn(argv...) -> "127.0.0.1:PORT"``; every process is killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,
        )
        procs.append(proc)
        return _read_address(proc, time.monotonic() + 30)

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


@pytest.fixture
def wizard(spawn: Spawn, tmp_path: Path) -> Callable[[str], str]:
    """``wizard("v1") -> "127.0.0.1:PORT"``: a wizard process on this test's shared db."""
    db = tmp_path / "signups.sqlite3"

    def start(version: str) -> str:
        return spawn(
            "-m", "skewless.demo.wizard", "--port", "0", "--version", version, "--db", str(db)
        )

    return start


@pytest.fixture
def round_robin(spawn: Spawn) -> Callable[..., str]:
    """``round_robin(addr1, addr2) -> "127.0.0.1:PORT"``: a proxy with no affinity."""

    def start(*backends: str) -> str:
        return spawn(str(HERE / "rr_proxy.py"), *backends)

    return start
