"""What the supervisor knows of one instance, and the agent's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skewless.agent.procs import Proc
from skewless.core.backoff import BackoffPolicy
from skewless.core.desired import InstanceSpec
from skewless.core.model import INSTANCE_TRANSITIONS, InstanceState, advance
from skewless.core.supervise import Observed

S = InstanceState


@dataclass(kw_only=True)
class AgentOptions:
    host_id: str
    slots: int = 4
    ports: tuple[int, int] = (20000, 29999)
    advertise: str = "127.0.0.1"
    """Host part of the addresses reported for instances."""
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    keep_releases: int = 3
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    log_retention: float = 86400.0
    """Seconds the logs of a forgotten instance are kept."""
    tick: float = 0.2


@dataclass(kw_only=True)
class Instance:
    """One supervised instance: its release, its process (if any) and what we saw of it."""

    id: str
    spec: InstanceSpec
    """The release this record runs or last ran (its ``desired`` is not used here)."""
    port: int
    state: InstanceState = S.STARTING
    proc: Proc | None = None
    preparing: bool = False
    stopping: bool = False
    restart_at: float | None = None
    crashes: tuple[float, ...] = ()
    restarts: int = 0
    starting_since: float | None = None
    health: dict[str, Any] | None = None
    next_check: float = 0.0
    checking: bool = False
    reason: str | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Instance {self.id} {self.state.value} pid={pid} port={self.port}>"

    def move(self, target: InstanceState) -> None:
        self.state = advance(INSTANCE_TRANSITIONS, self.state, target)

    def observed(self) -> Observed:
        return Observed(
            id=self.id,
            release_key=self.spec.release_key,
            state=self.state,
            alive=self.preparing or self.proc is not None,
            stopping=self.stopping,
            restart_at=self.restart_at,
            # Fetching an artifact does not count against the start timeout.
            starting_since=None if self.preparing else self.starting_since,
        )
