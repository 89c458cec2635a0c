"""Tools and processes for the benchmarks: find or install a Debian tool, stop a
process group.

The benchmarks run as scripts (``python bench/NAME.py``), so this folder is on
``sys.path`` and they import this module by its plain name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def tool(name: str) -> str | None:
    """The path of ``name``: on PATH, else in /usr/sbin (nginx, haproxy), else None."""
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None


def ensure_tools(packages: dict[str, str]) -> None:
    """Install with apt-get the Debian packages (package -> executable) not found."""
    missing = [pkg for pkg, exe in packages.items() if not tool(exe)]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to ``proc``'s process group (started with ``start_new_session``), then
    SIGKILL if it is still there after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
