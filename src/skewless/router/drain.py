"""Drain clocks of instances and the deadline of their long-lived connections.

An instance that turns ``draining`` in the route table (or leaves it) takes no new work;
its requests in flight finish as usual, and its tunnels (WebSockets) stay up until its
drain deadline (``skewless.core.route_table.drain_deadline``: from the table, else
``--drain-timeout`` after the router first saw it draining). At the deadline each tunnel
gets a clean 1001 close (``skewless.router.ws_tunnel``). An instance that turns ``ready``
again loses its deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skewless.core.route_table import InstanceRoute, VersionRoute, drain_deadline
from skewless.router.ws_tunnel import FINISHED

if TYPE_CHECKING:
    from skewless.router.instance import Instance
    from skewless.router.server import RouterServer


def track(
    inst: Instance, route: InstanceRoute, version: VersionRoute, now: float, default: float
) -> None:
    """Called for every instance of a newly applied table."""
    if route.state == "draining":
        if not inst.drain_since:
            inst.drain_since = now
        inst.drain_at = drain_deadline(route, version, inst.drain_since, default)
    else:
        inst.drain_since = inst.drain_at = 0.0


def track_removed(inst: Instance, now: float, default: float) -> None:
    """An instance left the table: a draining one keeps its deadline."""
    if not inst.drain_since:
        inst.drain_since = now
        inst.drain_at = now + default


def close_due_tunnels(server: RouterServer, wall: float, mono: float) -> int:
    """Tunnels to instances past their drain deadline get 1001; returns how many are
    closing. Forgets tunnels that have ended."""
    closing = 0
    tunnels = server.tunnels
    for ws in list(tunnels):
        if ws.state == FINISHED or ws.client.closing:
            tunnels.discard(ws)
            continue
        drain_at = ws.conn.instance.drain_at
        if ws.state or (drain_at and drain_at <= wall):
            ws.go_away()
            ws.check(mono)
            closing += 1
    return closing


def close_all_tunnels(server: RouterServer, mono: float) -> int:
    """The router's own drain deadline: every tunnel gets 1001; returns how many are
    still open."""
    left = 0
    tunnels = server.tunnels
    for ws in list(tunnels):
        if ws.state == FINISHED or ws.client.closing:
            tunnels.discard(ws)
            continue
        ws.go_away()
        ws.check(mono)
        left += ws.state != FINISHED
    return left
