"""The controller's store: the source of truth, behind an interface.

``Store`` is a Protocol so that a PostgreSQL store (several controllers, one leader) can
follow the SQLite one without touching the API or the engine. Rows are frozen
dataclasses; JSON-shaped parts (release specs, reports, options) stay dicts.

Rules every implementation keeps:

- Writes happen inside ``transaction()``; a transaction is all-or-nothing, so an action's
  effect, its generation bump and its journal ``done`` mark become visible together.
- The route-table generation and each host's desired generation only grow.
- Releases are immutable: ``add_release`` of an existing version is refused unless the
  spec is identical.
- The action journal is keyed by ``(rollout_id, action key)``; an entry is ``recorded``
  before the action is taken and ``done`` in the transaction that takes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JournalStatus = Literal["recorded", "done", "abandoned"]


@dataclass(frozen=True, kw_only=True)
class AppRow:
    name: str
    session: dict[str, Any]
    """``{"idle_timeout", "max_lifetime", "pin"}`` as last deployed."""
    created_at: float


@dataclass(frozen=True, kw_only=True)
class ReleaseRow:
    app: str
    version: str
    spec: dict[str, Any]
    created_at: float


@dataclass(frozen=True, kw_only=True)
class HostRow:
    id: str
    slots: int
    desired_generation: int
    report: dict[str, Any] | None
    report_at: float | None


@dataclass(frozen=True, kw_only=True)
class InstanceRow:
    id: str
    app: str
    version: str
    host: str
    desired: str
    """running | draining | stopped (what the agent is asked)."""
    table_state: str
    """absent | ready | draining (what routers are told)."""
    smoke: str
    """pending | passed | failed."""
    smoke_detail: str | None
    drain_generation: int | None
    created_at: float
    drained_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class VersionRow:
    app: str
    version: str
    state: str
    """live | draining | retired (route-table state)."""
    weight: float
    live_since: float | None
    weight_zero_since: float | None


@dataclass(frozen=True, kw_only=True)
class RolloutRow:
    id: int
    app: str
    from_version: str | None
    to_version: str
    strategy: str
    options: dict[str, Any]
    state: str
    step: int
    started_at: float
    last_progress_at: float
    finished_at: float | None
    reason: str | None
    waiting_for: str | None
    rollback_of: str | None
    step_since: float | None = None
    """When the current weights were applied."""
    step_baseline: dict[str, Any] = field(default_factory=dict)
    """Router counters when the current weights were applied: router -> version -> counters."""
    settled: bool = False
    """The planner said nothing is left to do (old versions retired): no more planning."""


@dataclass(frozen=True, kw_only=True)
class JournalRow:
    rollout_id: int
    key: str
    action: dict[str, Any]
    status: JournalStatus
    recorded_at: float
    done_at: float | None


@dataclass(frozen=True, kw_only=True)
class EventRow:
    id: int
    time: float
    app: str | None
    kind: str
    message: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.data,
            "id": self.id,
            "time": self.time,
            "app": self.app,
            "kind": self.kind,
            "message": self.message,
        }


class Store(Protocol):
    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...

    # apps and releases
    def upsert_app(self, name: str, session: dict[str, Any], now: float) -> bool:
        """Create or update; True when the session settings changed."""
        ...

    def get_app(self, name: str) -> AppRow | None: ...
    def list_apps(self) -> list[AppRow]: ...
    def add_release(self, app: str, version: str, spec: dict[str, Any], now: float) -> bool:
        """False when an identical release exists; raises ``ValueError`` if it differs."""
        ...

    def get_release(self, app: str, version: str) -> ReleaseRow | None: ...
    def list_releases(self, app: str) -> list[ReleaseRow]: ...

    # hosts
    def get_host(self, host_id: str) -> HostRow | None: ...
    def list_hosts(self) -> list[HostRow]: ...
    def save_host_report(self, host_id: str, report: dict[str, Any], now: float) -> None: ...
    def bump_host_generation(self, host_id: str) -> int: ...

    # instances and versions
    def get_instance(self, instance_id: str) -> InstanceRow | None: ...
    def list_instances(
        self, app: str | None = None, host: str | None = None
    ) -> list[InstanceRow]: ...
    def put_instance(self, row: InstanceRow) -> None: ...
    def update_instance(self, instance_id: str, **fields: Any) -> None: ...
    def get_version(self, app: str, version: str) -> VersionRow | None: ...
    def list_versions(self, app: str) -> list[VersionRow]: ...
    def put_version(self, row: VersionRow) -> None: ...

    # route table
    def table_generation(self) -> int: ...
    def bump_table_generation(self) -> int: ...
    def get_published(self, name: str) -> str | None:
        """The last body published under ``name`` (route table, a host's desired state)."""
        ...

    def set_published(self, name: str, body: str) -> None: ...

    # rollouts and journal
    def create_rollout(
        self,
        *,
        app: str,
        from_version: str | None,
        to_version: str,
        strategy: str,
        options: dict[str, Any],
        now: float,
        rollback_of: str | None = None,
    ) -> int: ...
    def get_rollout(self, rollout_id: int) -> RolloutRow | None: ...
    def latest_rollout(self, app: str) -> RolloutRow | None: ...
    def active_rollouts(self) -> list[RolloutRow]: ...
    def unsettled_rollouts(self) -> list[RolloutRow]:
        """The latest rollout of each app, unless the planner said it is settled."""
        ...

    def update_rollout(self, rollout_id: int, **fields: Any) -> None: ...
    def journal_get(self, rollout_id: int, key: str) -> JournalRow | None: ...
    def journal_record(
        self, rollout_id: int, key: str, action: dict[str, Any], now: float
    ) -> None: ...
    def journal_finish(
        self, rollout_id: int, key: str, status: JournalStatus, now: float
    ) -> None: ...
    def journal_pending(self) -> list[JournalRow]: ...
    def journal_all(self, rollout_id: int | None = None) -> list[JournalRow]: ...

    # events and reports
    def add_event(
        self,
        *,
        app: str | None,
        kind: str,
        message: str,
        now: float,
        data: dict[str, Any] | None = None,
    ) -> int: ...
    def list_events(
        self, *, app: str | None = None, after: int = 0, limit: int = 500
    ) -> list[EventRow]: ...
    def save_router_report(self, router_id: str, report: dict[str, Any], now: float) -> None: ...
    def router_reports(self) -> list[tuple[str, dict[str, Any], float]]: ...


def iter_report_instances(report: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """The instance entries of an agent report that look like objects with an id."""
    if not report:
        return
    for item in report.get("instances") or ():
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            yield item
