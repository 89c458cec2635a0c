"""Instance output: two append-only files per instance, rotated by copy-and-truncate.

The child writes to its files directly (opened with O_APPEND) so that it survives the
agent; the agent therefore cannot swap the file under it. Rotation copies the file to
``.1`` (shifting older ones) and truncates the original in place: the child's next write
lands at the new end. Lines written between the copy and the truncate are lost; that is
the usual price of copytruncate, and bounded by the rotation check interval.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

STREAMS = ("stdout", "stderr")


def stream_path(log_dir: Path, stream: str) -> Path:
    return log_dir / f"{stream}.log"


def tail_lines(path: Path, n: int, max_bytes: int = 256 * 1024) -> list[str]:
    """The last ``n`` lines of ``path`` (reading at most ``max_bytes`` from its end)."""
    if n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line read is probably cut
    return lines[-n:]


def rotate_if_big(path: Path, max_bytes: int, keep: int) -> bool:
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except OSError:
        return False
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def prune_dirs(root: Path, *, keep: set[str], older_than: float, now: float) -> list[str]:
    """Remove log directories not in ``keep`` untouched since ``now - older_than``.

    The output of a stopped or failed instance stays readable for a while (that is when
    people want it), then goes.
    """
    removed = []
    for d in root.iterdir():
        if not d.is_dir() or d.name in keep:
            continue
        try:
            newest = max((f.stat().st_mtime for f in d.iterdir()), default=d.stat().st_mtime)
        except OSError:
            continue
        if now - newest > older_than:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed
