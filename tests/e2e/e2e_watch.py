"""A status poller for the end-to-end tests: records, every ~0.2 s, each version's state,
weight and ready instances, so that a test can assert what happened *during* a rollout
(retired only after its sessions went idle, no host left the pool ...)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Seen:
    at: float
    """time.time() when the answer arrived."""
    versions: dict[str, tuple[str, float, int]]
    """version -> (state, weight, ready instances)."""
    rollout: dict[str, Any]


class StatusWatch:
    def __init__(self, api: str, app: str, *, deadline: float = 180.0) -> None:
        self.url = f"{api}/v1/apps/{app}"
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + deadline
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    body = http.get(self.url).json()
                except (httpx.HTTPError, ValueError):
                    self._stop.wait(0.2)
                    continue
                versions = {
                    str(v.get("version")): (
                        str(v.get("state")),
                        float(v.get("weight") or 0.0),
                        sum(1 for i in v.get("instances") or [] if i.get("state") == "ready"),
                    )
                    for v in body.get("versions") or []
                }
                self.seen.append(
                    Seen(at=time.time(), versions=versions, rollout=body.get("rollout") or {})
                )
                self._stop.wait(0.2)

    def first(self, version: str, state: str) -> float | None:
        """When ``version`` was first seen in ``state``."""
        for s in list(self.seen):
            if s.versions.get(version, ("", 0.0, 0))[0] == state:
                return s.at
        return None

    def gone_or(self, version: str, state: str) -> float | None:
        """When ``version`` was first seen in ``state`` or no longer listed (after being)."""
        listed = False
        for s in list(self.seen):
            if version in s.versions:
                listed = True
                if s.versions[version][0] == state:
                    return s.at
            elif listed:
                return s.at
        return None

    def ready_while_weighted(self, version: str) -> list[int]:
        """Ready instances of ``version`` at each look while it still had weight > 0."""
        return [
            s.versions[version][2]
            for s in list(self.seen)
            if version in s.versions and s.versions[version][1] > 0
        ]
