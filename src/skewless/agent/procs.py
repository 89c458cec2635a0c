"""Processes of instances: spawn in a new session, recognise them again, kill their group.

A pid alone does not identify a process across an agent restart: pids are reused. We
record the pid together with its start time (field 22 of ``/proc/PID/stat``, clock ticks
since boot); a process is ours only if both match and it is not a zombie. Every instance
is the leader of its own session and process group (``start_new_session``), so a stop or
a crash clean-up signals the whole group, children of the app included. Members of a
group are found by scanning ``/proc`` (only those started no earlier than the leader, so
that a recycled group id can never make us kill a stranger).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class ProcInfo:
    pid: int
    state: str
    pgid: int
    start_time: int


def proc_info(pid: int) -> ProcInfo | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return ProcInfo(pid=pid, state=rest[0], pgid=int(rest[2]), start_time=int(rest[19]))


def is_ours(pid: int, start_time: int) -> bool:
    """True if ``pid`` is still the live (non-zombie) process that started at ``start_time``."""
    info = proc_info(pid)
    return info is not None and info.start_time == start_time and info.state not in ("Z", "X")


def group_members(pgid: int, since: int) -> list[int]:
    """Live processes of group ``pgid`` started at or after ``since`` (clock ticks)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        info = proc_info(int(entry.name))
        if (
            info is not None
            and info.pgid == pgid
            and info.start_time >= since
            and info.state not in ("Z", "X")
        ):
            members.append(info.pid)
    return members


def signal_group(pgid: int, since: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the group; if its leader is gone, to each remaining member."""
    leader = proc_info(pgid)
    if leader is not None and leader.start_time == since and leader.pgid == pgid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        return
    for pid in group_members(pgid, since):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass(kw_only=True)
class Proc:
    """One running instance process (spawned by us, or adopted from a previous agent)."""

    pid: int
    start_time: int
    popen: subprocess.Popen[bytes] | None = None
    """None for adopted processes: they are not our children, we cannot wait for them."""

    @property
    def pgid(self) -> int:
        return self.pid

    def exited(self) -> tuple[bool, int | None]:
        """(has the leader exited, its exit code when known)."""
        if self.popen is not None:
            code = self.popen.poll()
            return code is not None, code
        return not is_ours(self.pid, self.start_time), None

    def group_alive(self) -> bool:
        if self.popen is not None:
            self.popen.poll()  # reap the leader so it does not linger as a zombie
        return bool(group_members(self.pgid, self.start_time))

    def signal(self, sig: signal.Signals) -> None:
        signal_group(self.pgid, self.start_time, sig)


def spawn(
    argv: list[str], *, env: dict[str, str], cwd: str | None, stdout: Path, stderr: Path
) -> Proc:
    """Start ``argv`` as the leader of a new session, output appended to the log files.

    The child writes straight to its files (not through a pipe to us), so it keeps
    running, and logging, when the agent exits or is killed.
    """
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    info = proc_info(popen.pid)
    start_time = info.start_time if info is not None else 0
    return Proc(pid=popen.pid, start_time=start_time, popen=popen)
