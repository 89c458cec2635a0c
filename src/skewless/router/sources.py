"""Where the route table and the keys come from: files (reloaded on SIGHUP and when they
change) and the on-disk cache of the last table received from the controller.

A reload is all-or-nothing: the new file is read and validated in full before anything
changes; an invalid file leaves the table (or keys) in force and logs one line saying
what is wrong and where.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from skewless.core.errors import ConfigError
from skewless.core.pin import Keyring, parse_keys
from skewless.core.route_table import RouteTable, parse_route_table

log = logging.getLogger("skewless.router")


def decode_table(text: str, source: str) -> tuple[RouteTable, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{source}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    try:
        return parse_route_table(obj), obj
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def load_routes(path: Path) -> RouteTable:
    return decode_table(read_text(path), str(path))[0]


def load_keys(path: Path) -> Keyring:
    return parse_keys(read_text(path), str(path))


def signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is edited or replaced (mtime, size, inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def write_atomic(path: Path, text: str) -> None:
    """Write a temp file beside ``path``, fsync it, rename it over ``path``, fsync the dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def default_state_dir() -> Path:
    base = os.environ.get("SKEWLESS_HOME") or os.path.expanduser("~/.skewless")
    return Path(base)
