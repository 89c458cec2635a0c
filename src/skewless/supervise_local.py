"""Child processes on this machine, for ``skewless up``: start each part in its own
process group with its output in a log file, wait until it answers HTTP (with a
deadline, noticing when it dies first), and stop everything it started, including the
grandchildren (app instances) that an agent leaves behind.

Why a subreaper: agents start instances in process groups of their own (so that an
agent can be restarted without touching them), so killing an agent's group does not
reach its instances, and when the agent dies they are re-parented away from us. On
Linux, ``up`` marks itself a *child subreaper* (prctl PR_SET_CHILD_SUBREAPER): orphans
of its descendants are re-parented to ``up`` instead of init, so at shutdown every
process it ever caused is still its descendant, found by walking ``/proc``, and stopped
by process group: SIGTERM, a grace period, SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import httpx

from skewless.core.errors import ConfigError, UpstreamError

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, *, flag: str) -> None:
    """Raise ``ConfigError`` naming the flag when something listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same options as the servers we start, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{flag} {host}:{port}: port {port} is taken; stop what listens "
                    f"there or choose another with {flag}"
                ) from None
            raise ConfigError(
                f"{flag} {host}:{port}: cannot listen there ({exc.strerror})"
            ) from None


def parse_listen(value: str, *, flag: str) -> tuple[str, int]:
    """``127.0.0.1:8080`` or ``http://127.0.0.1:8080`` -> ("127.0.0.1", 8080)."""
    raw = value.split("://", 1)[1] if "://" in value else value
    raw = raw.rstrip("/")
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {value!r} must look like 127.0.0.1:8080 (host:port)")
    return host.strip("[]"), int(port)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """One part (controller, router, agent) run as a process group of its own."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Child {self.name} pid={pid} running={self.running} restarts={self.restarts}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def exit_description(self) -> str:
        code = self.proc.returncode if self.proc else None
        if code is None:
            return "running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self, deadline: float) -> bool:
        """Wait until the process exited or the monotonic deadline passed."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False


def stop_children(children: Sequence[Child], *, grace: float) -> None:
    """SIGTERM every child's group, wait up to ``grace`` seconds, SIGKILL the rest."""
    for child in children:
        if child.running:
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        child.wait(deadline)
    for child in children:
        # Also kill what is left of the group even when the leader is gone.
        child.signal_group(signal.SIGKILL)
        child.wait(time.monotonic() + 5)


def mentions(pid: int, path: Path) -> bool:
    """Whether process ``pid`` is alive and its command line contains ``path``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(path) in cmdline


def stop_groups(pids: Sequence[int], *, grace: float) -> None:
    """SIGTERM the process groups of ``pids`` (not our children), wait up to ``grace``
    seconds for the leaders to go, then SIGKILL the groups."""

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    groups: set[int] = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())  # never ourselves
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state letter) for every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2:
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of ``root``, found through /proc."""
    if not os.path.isdir("/proc"):
        return []
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return [pid for pid in found if table[pid][1] != "Z"]


def reap_zombies(keep: Iterable[int] = ()) -> None:
    """Collect exited adopted orphans so that none stays a zombie.

    Only zombies that are our direct children and not in ``keep`` (the pids that
    ``subprocess.Popen`` objects own, whose exit status they must read themselves).
    """
    if not os.path.isdir("/proc"):
        return
    me, kept = os.getpid(), set(keep)
    for pid, (ppid, state) in _proc_table().items():
        if ppid == me and state == "Z" and pid not in kept:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def kill_descendants(
    *, grace: float, hurry: Callable[[], bool] = lambda: False, keep: Iterable[int] = ()
) -> list[int]:
    """Stop every remaining descendant of this process by process group: SIGTERM, up to
    ``grace`` seconds, SIGKILL. Returns the pids that were found. ``keep``: pids of our
    ``Popen`` children, which are stopped but not reaped here."""
    keep = list(keep)
    me, my_group = os.getpid(), os.getpgrp()
    found = descendants(me)
    if not found:
        return []

    def send(sig: int) -> None:
        for pid in descendants(me):
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group != my_group:
                    os.killpg(group, sig)
                else:
                    os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while descendants(me) and time.monotonic() < deadline and not hurry():
        reap_zombies(keep)
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while descendants(me) and time.monotonic() < deadline:
        reap_zombies(keep)
        time.sleep(0.05)
    reap_zombies(keep)
    return found


def wait_http(
    url: str,
    *,
    child: Child,
    timeout: float,
    accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    what: str,
) -> httpx.Response:
    """Poll ``url`` until ``accept`` says yes; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0) as http:
        while True:
            if not child.running:
                raise UpstreamError(
                    f"{child.name} {child.exit_description()} before {what} "
                    f"(log {child.log}):\n{tail(child.log)}"
                )
            try:
                response = http.get(url)
                if accept(response):
                    return response
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"{child.name}: {what} did not happen within {timeout:g} s "
                    f"({url}: {last}; log {child.log}):\n{tail(child.log)}"
                )
            time.sleep(0.1)
