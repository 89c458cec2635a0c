"""``skewless up`` as a test fixture: a real fleet (controller, router, N agents) in a
process group of its own, driven through the real CLI, and stopped in teardown with a
check that nothing it started is left (every part and instance has the test's tmp path
in its command line, so /proc tells what remains).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINYAPP = str(Path(__file__).resolve().parent / "e2e_tinyapp.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
            )
        time.sleep(every)


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line contains ``marker``."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found[int(entry)] = cmdline
    return found


class Fleet:
    def __init__(self, tmp: Path, *, hosts: int = 4, slots: int = 4) -> None:
        self.tmp = tmp
        self.marker = str(tmp)
        self.home = tmp / "home"
        self.state = tmp / "state"
        self.hosts = hosts
        self.slots = slots
        self.http_port = free_port()
        self.api_port = free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": SRC,
            "SKEWLESS_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
        }
        for key in ("SKEWLESS_API", "SKEWLESS_TOKEN"):
            self.env.pop(key, None)
        self.output = tmp / "up.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    # ---- lifecycle --------------------------------------------------------------------

    def start(self, *extra: str) -> None:
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "skewless", "up",
                    "--hosts", str(self.hosts), "--slots", str(self.slots),
                    "--http", f"127.0.0.1:{self.http_port}",
                    "--api", f"127.0.0.1:{self.api_port}",
                    "--state", str(self.state), *extra,
                ],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"skewless up exited {self.proc.returncode}:\n{self.log()}")
            return "Ctrl-C stops everything" in self.log()

        wait_for("skewless up to be ready", ready, timeout=90)
        self.token = json.loads((self.home / "current.json").read_text())["token"]

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def part_log(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def parts(self) -> dict[str, Any]:
        return json.loads((self.state / "up.json").read_text())["parts"]

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM ``up`` and wait for it; returns its exit status (None if it hung)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def leftovers(self) -> dict[int, str]:
        return processes_with(self.marker)

    def kill_everything(self) -> dict[int, str]:
        """Last resort for teardown: kill ``up``'s group and anything carrying our marker."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return left

    # ---- driving it -------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "skewless", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def tinyapp(self, version: str, *extra: str) -> str:
        """The ``--command`` of the tiny app at ``version``."""
        parts = [sys.executable, TINYAPP, "--port", "{port}", "--version", version]
        return " ".join([*parts, *extra, "--mark", self.marker])

    def deploy(
        self, app: str, version: str, *flags: str, wait: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = ["deploy", app, version, "--command", self.tinyapp(version), "--health", "/healthz"]
        return self.cli(*args, *flags, *(["--wait"] if wait else []))

    def status(self, app: str) -> dict[str, Any]:
        r = httpx.get(f"{self.api}/v1/apps/{app}", timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def version_state(self, app: str, version: str) -> str | None:
        for v in self.status(app).get("versions") or []:
            if v.get("version") == version:
                return str(v.get("state"))
        return None

    def ready_instances(self, app: str, version: str) -> int:
        for v in self.status(app).get("versions") or []:
            if v.get("version") == version:
                return sum(1 for i in v.get("instances") or [] if i.get("state") == "ready")
        return 0

    def serves(self, version: str) -> bool:
        """A fresh session (no cookie) is answered by ``version``."""
        r = httpx.get(f"{self.http}/", timeout=5)
        return r.status_code == 200 and r.headers.get("x-app-version") == version


@contextlib.contextmanager
def running_fleet(tmp_path: Path, *, hosts: int, slots: int) -> Iterator[Fleet]:
    """A started ``Fleet``; on leaving, stopped, and no process of it left behind
    (asserted, even when the body failed)."""
    f = Fleet(tmp_path, hosts=hosts, slots=slots)
    try:
        f.start()
        yield f
    finally:
        f.stop()
        left = f.kill_everything()
        assert not left, f"processes left behind: {left}"
