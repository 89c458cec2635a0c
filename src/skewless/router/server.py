"""The router's running state: the route table in force, compiled per app into routing
policies, the instances with their health and pools, the signing keys, and the timers.

Theory of operation
-------------------
``apply_table`` swaps the table atomically between two events of the loop: in-flight
exchanges keep the ``Instance`` objects they hold (instances removed from the table finish
what they have and their pools are closed), new requests see the new policies. Instances
that keep their id and address keep their state.

Health changes (active checks, passive ejection, ejection expiry) recompile the policy of
the instance's app, so the per-request path never looks at health at all.

One ``sweep`` every ``TICK`` seconds enforces every timeout (header timeout -> 408, idle
keep-alive, upstream timeout -> 504, idle pooled connections, ejection expiry) with a
coarse clock, instead of one timer per request. Against slow clients (see
``skewless.router.limits``) it also checks request body progress (408), response send
progress of clients that stopped reading (close), and expires shed connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from skewless.core.model import VersionState
from skewless.core.pin import Pin, PinCodec, cookie_max_age
from skewless.core.route_table import EMPTY_TABLE, AppRoute, RouteTable
from skewless.core.routing import AppPolicy, VersionPool, compile_policy, eligible
from skewless.router import clock, drain
from skewless.router.client import ClientProtocol
from skewless.router.exchange import Exchange
from skewless.router.instance import Instance
from skewless.router.limits import Counters, ShedProtocol, reset
from skewless.router.metrics import VersionStats
from skewless.router.upstream import UpstreamProtocol
from skewless.router.ws_tunnel import WsTunnel

log = logging.getLogger("skewless.router")
TICK = 0.1


@dataclass(frozen=True, kw_only=True)
class Options:
    header_timeout: float = 10.0
    """A client must send a whole request head within this (else 408)."""
    keepalive_timeout: float = 75.0
    """An idle client connection is closed after this."""
    upstream_timeout: float = 60.0
    """No response head (or no response byte mid-body) from an instance -> 504 / close."""
    connect_timeout: float = 2.0
    pool_idle: float = 1.5
    """Idle pooled connections are closed after this: shorter than the keep-alive of
    common app servers (uvicorn 5 s, gunicorn 2 s), so we do not write to a connection
    they closed."""
    max_head: int = 32 * 1024
    eject_after: int = 3
    """Consecutive connect failures that eject an instance (passive)."""
    eject_time: float = 10.0
    drain_timeout: float = 30.0
    worker: int = 0
    workers: int = 1
    metrics_dir: str | None = None
    """With ``--workers N``: where each worker publishes its metrics for worker 0's
    ``/metrics`` (a directory the supervisor makes and removes)."""
    secure_cookies: bool = False
    """Mark pin cookies ``Secure`` (the router sits behind a TLS terminator)."""
    body_timeout: float = 20.0
    """A request body must make progress within each window this long (else 408)."""
    body_min_rate: float = 500.0
    """Bytes per second a request body must average over each ``body_timeout`` window."""
    send_timeout: float = 30.0
    """A client that does not read its response for this long is disconnected."""
    send_buffer_limit: int = 64 * 1024 * 1024
    """Response bytes buffered for clients that stopped reading, per worker: beyond it,
    the client without progress for longest is disconnected."""
    max_connections: int = 10_000
    """Client connections per worker; beyond it new ones get a quick 503."""


class AppRuntime:
    """One app of the table, compiled for the hot path."""

    __slots__ = (
        "cookie_b",
        "cookie_suffix",
        "header_b",
        "header_is_version",
        "idle",
        "life",
        "name",
        "pin",
        "policy",
        "refresh",
        "route",
        "stats",
        "versions_b",
    )

    def __init__(
        self,
        route: AppRoute,
        stats: dict[tuple[str, str], VersionStats],
        secure: bool = False,
    ) -> None:
        self.route = route
        self.name = route.name
        s = route.session
        self.pin = s.pin
        self.cookie_b = s.cookie.encode()
        self.header_b = s.header.encode()
        self.header_is_version = s.header.lower() == "skewless-version"
        """The table named Skewless-Version as its pin header: a header-form client then
        gets its token there (one header of that name per response)."""
        self.idle = s.idle_timeout
        self.life = s.max_lifetime
        self.refresh = min(60.0, s.idle_timeout / 10.0)
        """Re-issue a pin this old (seconds): see ``skewless.core.pin.needs_refresh``."""
        self.cookie_suffix = b"; Path=/; HttpOnly; SameSite=Lax" + (b"; Secure" if secure else b"")
        self.policy: AppPolicy[Instance] = compile_policy([])
        self.versions_b = {v.version: v.version.encode() for v in route.versions}
        self.stats: dict[str, VersionStats] = {}
        for v in route.versions:
            key = (route.name, v.version)
            if key not in stats:
                stats[key] = VersionStats(route.name, v.version)
            self.stats[v.version] = stats[key]

    def __repr__(self) -> str:
        return f"AppRuntime({self.name} versions={list(self.versions_b)})"

    def version_bytes(self, version: str) -> bytes:
        return self.versions_b.get(version) or version.encode()

    def stats_for(self, version: str) -> VersionStats:
        return self.stats[version]

    def pin_header(self, pin: Pin, now: float, via_header: bool) -> tuple[bytes, bytes]:
        if via_header:
            return self.header_b, pin.token
        age = cookie_max_age(pin, now, self.idle, self.life)
        return b"Set-Cookie", (
            self.cookie_b + b"=" + pin.token + b"; Max-Age=%d" % age + self.cookie_suffix
        )


class RouterServer:
    def __init__(self, codec: PinCodec, options: Options) -> None:
        self.codec = codec
        self.options = options
        self.max_head = options.max_head
        self.table: RouteTable = EMPTY_TABLE
        self.apps: dict[str, AppRuntime] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.stats: dict[tuple[str, str], VersionStats] = {}
        self.host_cache: dict[bytes, AppRuntime | None] = {}
        self.pin_headers: frozenset[bytes] = frozenset()
        self.clients: set[ClientProtocol] = set()
        self.shedding: dict[ShedProtocol, None] = {}
        self.blocked: dict[ClientProtocol, list[float]] = {}
        """Clients that stopped reading -> [time of last send progress, bytes buffered]."""
        self.counters = Counters()
        self.fresh_shift = max(0.0, options.keepalive_timeout - options.header_timeout)
        """A new connection's first request head is due within the header timeout, not
        the keep-alive timeout: it starts out this much idle already."""
        self.body_need = max(1.0, options.body_min_rate * options.body_timeout)
        self.tunnels: set[WsTunnel] = set()
        """WebSocket tunnels (pruned by ``drain.close_due_tunnels``)."""
        self.draining = False
        self.epoch = 0
        """Bumped whenever routing may change (table, health, keys): per-connection route
        caches are valid only within one epoch."""
        self.mono = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.start_health: Callable[[Instance], None] = lambda i: None
        self.loaded_at = time.time()

    def __repr__(self) -> str:
        return (
            f"RouterServer(generation={self.table.generation} apps={list(self.apps)} "
            f"clients={len(self.clients)} draining={self.draining})"
        )

    # ---- the table -------------------------------------------------------------------

    def apply_table(self, table: RouteTable) -> None:
        old = self.instances
        new: dict[tuple[str, str], Instance] = {}
        apps: dict[str, AppRuntime] = {}
        added: list[Instance] = []
        for route in table.apps:
            for v in route.versions:
                for i in v.instances:
                    key = (route.name + "\0" + i.id, i.address)
                    inst = old.get(key)
                    if inst is None or inst.version != v.version:
                        inst = Instance(
                            id=i.id,
                            address=i.address,
                            host=i.host,
                            port=i.port,
                            app=route.name,
                            version=v.version,
                            state=i.state,
                            check=v.health,
                        )
                        added.append(inst)
                    else:
                        inst.state = i.state
                        if inst.check != v.health:
                            inst.check = v.health
                    new[key] = inst
                    drain.track(inst, i, v, time.time(), self.options.drain_timeout)
            apps[route.name] = AppRuntime(route, self.stats, self.options.secure_cookies)
        for key, inst in old.items():
            if key not in new:
                drain.track_removed(inst, time.time(), self.options.drain_timeout)
                inst.removed = True
                inst.close_idle()
                task = inst.health_task
                if isinstance(task, asyncio.Task):
                    task.cancel()
        self.instances = new
        self.apps = apps
        self.table = table
        self.host_cache = {}
        self.epoch += 1
        self.pin_headers = frozenset(a.session.header.lower().encode() for a in table.apps)
        for name in apps:
            self.recompile(name)
        for inst in added:
            self.start_health(inst)
        self.loaded_at = time.time()

    def recompile(self, app_name: str) -> None:
        runtime = self.apps.get(app_name)
        if runtime is None:
            return
        by_version: dict[str, list[tuple[str, Instance]]] = {}
        for (_key, _), inst in self.instances.items():
            if inst.app == app_name:
                by_version.setdefault(inst.version, []).append((inst.state, inst))
        pools = []
        for v in runtime.route.versions:
            candidates, ready = eligible(by_version.get(v.version, []), lambda b: b.up)
            pools.append(
                VersionPool(
                    version=v.version,
                    state=v.state,
                    weight=v.weight,
                    candidates=candidates,
                    ready=ready,
                )
            )
        runtime.policy = compile_policy(pools)
        self.epoch += 1

    def app_for(self, host: bytes) -> AppRuntime | None:
        cache = self.host_cache
        try:
            return cache[host]
        except KeyError:
            pass
        route = self.table.app_for_host(host.decode("latin-1"))
        runtime = self.apps.get(route.name) if route is not None else None
        if len(cache) > 4096:
            cache.clear()
        cache[host] = runtime
        return runtime

    # ---- health ----------------------------------------------------------------------

    def set_healthy(self, inst: Instance, healthy: bool) -> None:
        if inst.healthy != healthy:
            inst.healthy = healthy
            log.warning(
                "instance %s (%s) is %s", inst.id, inst.address, "up" if healthy else "down"
            )
            if not healthy:
                inst.close_idle()
            self.recompile(inst.app)

    def connect_failed(self, inst: Instance) -> None:
        """A connect failure, or an exchange that ended with no whole answer (reset,
        closed, timed out): consecutive ones eject (a complete answer ends the streak,
        not a mere connect, or an instance that accepts and resets would never count)."""
        inst.consecutive_failures += 1
        if inst.consecutive_failures < self.options.eject_after or inst.ejected_until:
            return
        # The cap: passive ejection alone never leaves a version with no instance up.
        others = [
            i
            for i in self.instances.values()
            if i.app == inst.app and i.version == inst.version and i is not inst and i.up
        ]
        if not others:
            return
        inst.ejected_until = self.mono + self.options.eject_time
        log.warning(
            "instance %s ejected for %.0fs after %d failures in a row",
            inst.id,
            self.options.eject_time,
            inst.consecutive_failures,
        )
        inst.close_idle()
        self.recompile(inst.app)

    def accept(self) -> asyncio.Protocol:
        """The listener's protocol factory: a client, or a quick 503 over the limit."""
        if len(self.clients) >= self.options.max_connections:
            return ShedProtocol(self)
        client = ClientProtocol(self)
        self.clients.add(client)  # counted now: a burst of accepts cannot overshoot
        return client

    # ---- connecting ------------------------------------------------------------------

    def open_upstream(self, ex: Exchange) -> None:
        assert self.loop is not None
        self.loop.create_task(self._connect(ex))

    async def _connect(self, ex: Exchange) -> None:
        inst = ex.instance
        assert inst is not None and self.loop is not None
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamProtocol(inst), inst.host, inst.port),
                self.options.connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            log.warning("connect to %s (%s) failed: %s", inst.id, inst.address, error or "timeout")
            self.connect_failed(inst)
            if ex.instance is inst:
                ex.connect_failed()
            return
        if ex.done or ex.instance is not inst:
            conn.release(True)
        else:
            ex.attach(conn)

    # ---- timers ----------------------------------------------------------------------

    def sweep(self) -> None:
        clock.advance()
        now = self.mono = clock.mono
        o = self.options
        timeouts = self.counters.timeouts
        blocked = self.blocked
        for client in list(self.clients):
            if client.closing or client.tunnel is not None:
                if client.closing and client not in blocked:
                    # a close waits for the write buffer to drain: give a client that
                    # reads nothing the send timeout, even under the high-water mark
                    transport = client.transport
                    size = transport.get_write_buffer_size() if transport is not None else 0
                    if size:
                        blocked[client] = [now, size]
                continue
            ex = client.active
            if ex is not None:
                if ex.has_body and not ex.request_done and not ex.done:
                    if client.paused:  # the router holds the body back, not the client
                        ex.body_mark_at = 0.0
                    elif not ex.body_mark_at:
                        ex.body_mark_at = now
                        ex.body_mark_bytes = ex.body_bytes
                    elif now - ex.body_mark_at > o.body_timeout:
                        if ex.body_bytes - ex.body_mark_bytes < self.body_need:
                            timeouts["body"] += 1
                            self.body_timed_out(client, ex)
                            continue
                        ex.body_mark_at = now
                        ex.body_mark_bytes = ex.body_bytes
                conn = ex.conn
                if conn is not None and not conn.held and now - conn.last_io > o.upstream_timeout:
                    log.warning("instance %s timed out on a request", ex.instance_id())
                    timeouts["upstream"] += 1
                    ex.timed_out()
            elif client.awaiting_head:
                if client.head_bytes and now - client.head_started > o.header_timeout:
                    timeouts["header"] += 1
                    client.refuse(408, "request head not received in time")
                elif not client.head_bytes and now - client.idle_since > o.keepalive_timeout:
                    timeouts["idle"] += 1
                    client.close()
        if self.blocked:
            self.sweep_blocked(now)
        if self.shedding:
            for shed in list(self.shedding):
                shed.expire(now)
        horizon = now - o.pool_idle
        changed = set()
        for inst in self.instances.values():
            if inst.idle:
                inst.close_idle(older_than=horizon)
            if inst.ejected_until and inst.ejected_until <= now:
                inst.ejected_until = 0.0
                inst.consecutive_failures = 0
                changed.add(inst.app)
        for app in changed:
            self.recompile(app)

    def body_timed_out(self, client: ClientProtocol, ex: Exchange) -> None:
        """A request body too slow: 408 and close; the instance's connection is closed
        (never reused), so the instance sees an aborted request, never a complete one."""
        log.info("request body from %s too slow: 408", client.ip.decode())
        if ex.response_started:  # the instance answered early: no room for a 408
            conn = ex.conn
            ex.conn = None
            if conn is not None:
                conn.ex = None
                conn.close()
            client.abort()
        else:
            client.refuse(408, "request body not received in time")

    def sweep_blocked(self, now: float) -> None:
        """Clients that stopped reading: closed once nothing was sent for send_timeout,
        or, when what they hold together passes send_buffer_limit, the ones without
        progress for longest first (each also pins kernel socket buffers on both sides)."""
        limit = self.options.send_timeout
        timeouts = self.counters.timeouts
        total = 0
        for client, mark in list(self.blocked.items()):
            transport = client.transport
            size = transport.get_write_buffer_size() if transport is not None else 0
            if size < mark[1]:
                mark[0] = now
            mark[1] = size
            if now - mark[0] > limit:
                del self.blocked[client]
                timeouts["send"] += 1
                log.info("client %s did not read its response in time: closed", client.ip.decode())
                self.cut(client)
            else:
                total += size
        budget = self.options.send_buffer_limit
        if total > budget:
            cut = 0
            for client, mark in sorted(self.blocked.items(), key=lambda item: item[1][0]):
                if total <= budget:
                    break
                total -= int(mark[1])
                del self.blocked[client]
                cut += 1
                self.cut(client)
            timeouts["buffer"] += cut
            log.info("clients not reading held over %d bytes: cut %d of them", budget, cut)

    def cut(self, client: ClientProtocol) -> None:
        """Disconnect a client that does not read, with a reset (see ``limits.reset``)."""
        client.out = []
        client.closing = True
        reset(client.transport)

    def busy(self) -> int:
        """Exchanges and tunnels still in flight (for the drain)."""
        return sum(1 for c in self.clients if c.active is not None or c.tunnel is not None)

    def state(self) -> dict[str, object]:
        return {
            "generation": self.table.generation,
            "worker": self.options.worker,
            "draining": self.draining,
            "apps": [
                {
                    "app": name,
                    "versions": [
                        {
                            "version": v.version,
                            "state": v.state.value,
                            "weight": v.weight,
                            "takes_new_sessions": any(
                                p.version == v.version for p in rt.policy.weighted
                            ),
                        }
                        for v in rt.route.versions
                    ],
                }
                for name, rt in self.apps.items()
            ],
            "instances": [
                {
                    "id": i.id,
                    "app": i.app,
                    "version": i.version,
                    "address": i.address,
                    "state": i.state,
                    "healthy": i.healthy,
                    "ejected": bool(i.ejected_until),
                    "up": i.up,
                    "inflight": i.inflight,
                    "idle_connections": len(i.idle),
                    "drain_at": i.drain_at or None,
                }
                for i in self.instances.values()
            ],
        }

    def version_state(self, app: str, version: str) -> VersionState | None:
        rt = self.apps.get(app)
        route = rt.route.version(version) if rt else None
        return route.state if route else None
