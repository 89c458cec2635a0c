"""The agent's state directory: what must survive an agent restart, written atomically.

Layout::

    DIR/agent.json               pid and listen address of the running agent
    DIR/desired.json             the last valid desired state (used when the source is bad
                                 or unreachable at start)
    DIR/instances/<ID>.json      one record per instance process: pid, start time, port,
                                 restarts, state, and the spec of the release it runs
    DIR/logs/<ID>/stdout.log     instance output (rotated: stdout.log.1, .2 ...)
    DIR/releases/APP/VERSION/    unpacked artifacts

``<ID>`` is the instance id percent-encoded (ids contain ``/``). Every file is written to
a temporary name, fsynced and renamed over the old one, so a crash never leaves half a
record behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.logs = root / "logs"
        self.releases = root / "releases"
        for d in (self.instances, self.logs, self.releases):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"StateDir({str(self.root)!r})"

    @staticmethod
    def key(instance_id: str) -> str:
        return quote(instance_id, safe="")

    def record_path(self, instance_id: str) -> Path:
        return self.instances / f"{self.key(instance_id)}.json"

    def log_dir(self, instance_id: str) -> Path:
        d = self.logs / self.key(instance_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_record(self, instance_id: str, record: dict[str, object]) -> None:
        write_json(self.record_path(instance_id), record)

    def drop_record(self, instance_id: str) -> None:
        self.record_path(instance_id).unlink(missing_ok=True)

    def load_records(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Every record as (instance id, data); data is None when the file is unreadable."""
        out: list[tuple[str, dict[str, Any] | None]] = []
        for path in sorted(self.instances.glob("*.json")):
            ident = unquote(path.name[: -len(".json")])
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                out.append((ident, None))
                continue
            out.append((ident, data if isinstance(data, dict) else None))
        return out

    def save_desired(self, doc: dict[str, object]) -> None:
        write_json(self.root / "desired.json", doc)

    def load_desired(self) -> str | None:
        try:
            return (self.root / "desired.json").read_text()
        except OSError:
            return None

    def save_agent(self, info: dict[str, object]) -> None:
        write_json(self.root / "agent.json", info)
