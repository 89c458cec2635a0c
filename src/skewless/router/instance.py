"""One app instance as the router sees it: health, ejection, in-flight work and a pool of
idle keep-alive connections to it.

An ``Instance`` outlives route-table reloads as long as its id and address stay the
same, so health state, counters and pooled connections survive a reload.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from skewless.core.route_table import HealthCheck

if TYPE_CHECKING:
    from skewless.router.exchange import ResponseMemo
    from skewless.router.upstream import UpstreamProtocol

MAX_IDLE = 512
"""Idle connections kept per instance (more are closed when released)."""


class Instance:
    __slots__ = (
        "address",
        "app",
        "check",
        "consecutive_failures",
        "drain_at",
        "drain_since",
        "ejected_until",
        "health_task",
        "healthy",
        "host",
        "id",
        "idle",
        "inflight",
        "memo",
        "port",
        "removed",
        "seen",
        "state",
        "streak",
        "version",
    )

    def __init__(
        self,
        *,
        id: str,
        address: str,
        host: str,
        port: int,
        app: str,
        version: str,
        state: str,
        check: HealthCheck,
    ) -> None:
        self.id = id
        self.address = address
        self.host = host
        self.port = port
        self.app = app
        self.version = version
        self.state = state
        self.check = check
        self.inflight = 0
        """Requests in flight and open tunnels (the balancing signal)."""
        self.idle: list[UpstreamProtocol] = []
        self.healthy = True
        """Active health checks: an instance in the table starts up (the controller only
        lists instances its agent found ready) and goes down after ``fall`` failures."""
        self.streak = 0
        """Consecutive check results against the current ``healthy`` value."""
        self.consecutive_failures = 0
        """Consecutive connect failures (passive ejection)."""
        self.ejected_until = 0.0
        self.health_task: object | None = None
        self.drain_since = 0.0
        """UNIX time the router first saw this instance draining (or removed); 0: not."""
        self.drain_at = 0.0
        """UNIX time its tunnels get 1001 (``skewless.core.route_table.drain_deadline``)."""
        self.removed = False
        self.memo: ResponseMemo | None = None
        """The last response head parsed for this instance (the replay lane of
        ``skewless.router.upstream``)."""
        self.seen = b""
        """The last response head parsed: a memo once it comes twice in a row."""

    def __repr__(self) -> str:
        return (
            f"Instance({self.id} {self.address} {self.state} healthy={self.healthy} "
            f"ejected={self.ejected_until > 0} inflight={self.inflight} idle={len(self.idle)})"
        )

    @property
    def up(self) -> bool:
        return self.healthy and self.ejected_until == 0.0

    def take_idle(self) -> UpstreamProtocol | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_idle(self, conn: UpstreamProtocol) -> None:
        if self.removed or len(self.idle) >= MAX_IDLE:
            conn.close()
        else:
            self.idle.append(conn)

    def discard(self, conn: UpstreamProtocol) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_idle(self, older_than: float | None = None) -> None:
        keep = []
        for conn in self.idle:
            if older_than is None or conn.last_io < older_than:
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep
