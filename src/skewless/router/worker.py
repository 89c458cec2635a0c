"""One router process: the listener, the timers, reloads, the admin listener, the
controller link, the drain on SIGTERM, and the two ends of a hitless upgrade
(``skewless.router.upgrade``).

Every background task belongs to the worker's task set and is cancelled when it stops.

The drain: stop accepting; answer what is in flight (with ``Connection: close``); close
keep-alive connections that have been idle for ``IDLE_GRACE`` (one idle for less may be
sending its next request right now: closing it would race that request, so it gets the
chance to send it and have it answered); at the drain deadline send 1001 to every
WebSocket; then close what is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from skewless.core.errors import ConfigError
from skewless.core.pin import PinCodec
from skewless.core.route_table import RouteTable
from skewless.router import clock, drain, handover, health, metrics, ws_tunnel
from skewless.router.limits import limit_unsent
from skewless.router.server import TICK, Options, RouterServer
from skewless.router.sources import default_state_dir, load_keys, load_routes, signature
from skewless.router.upgrade import Handover, UpgradeError, UpgradeListener, confirm_ready

log = logging.getLogger("skewless.router")

FULL_COLLECTION_EVERY = 100
"""Middle-generation collections between full ones (CPython's default: 10). Closed
connections leave no cyclic garbage, so a full collection finds next to nothing and
mostly walks live connections: 7-11 ms with ~50,000 objects (docs/decisions/router-gc.md)."""
IDLE_GRACE = 1.0
"""Draining: a keep-alive connection idle this long is closed; a younger one may still
send one more request (answered with ``Connection: close``)."""


class Worker:
    def __init__(
        self,
        args: argparse.Namespace,
        index: int,
        codec: PinCodec,
        table: RouteTable,
        socks: list[socket.socket],
        admin_sock: socket.socket | None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.args = args
        self.index = index
        self.socks = socks
        self.admin_sock = admin_sock
        self.state = state
        """Handed over by the router this one takes over from (``handover.snapshot``)."""
        self.handover: Handover | None = None
        """Set when this process took over: ``ready`` is sent once it serves."""
        self.upgrade: UpgradeListener | None = None
        self.upgrade_path: str | None = None
        """Single-process router: serve takeovers on this path."""
        self.handed_over = False
        self.on_serving: Any = None
        """Called once the listeners accept (the supervisor's readiness pipe)."""
        self.state_sock: socket.socket | None = None
        """Worker of a supervisor: it asks for ``handover.snapshot`` here."""
        self.successor: Any = None
        self.idle_seen: dict[Any, tuple[float, float]] = {}
        """Draining: client -> (its ``idle_since``, when the drain first saw it idle)."""
        options = Options(
            header_timeout=args.header_timeout,
            keepalive_timeout=args.keepalive_timeout,
            upstream_timeout=args.upstream_timeout,
            connect_timeout=args.connect_timeout,
            max_head=args.max_header_size,
            drain_timeout=args.drain_timeout,
            worker=index,
            workers=args.workers,
            metrics_dir=getattr(args, "metrics_dir", None),
            secure_cookies=args.secure_cookies,
            body_timeout=args.body_timeout,
            body_min_rate=args.body_min_rate,
            send_timeout=args.send_timeout,
            send_buffer_limit=args.send_buffer_limit,
            max_connections=args.max_connections,
        )
        self.server = RouterServer(codec, options)
        self.initial = table
        self.tasks: set[asyncio.Task[Any]] = set()
        self.routes_sig = signature(args.routes) if args.routes else None
        self.keys_sig = signature(args.keys) if args.keys else None

    def __repr__(self) -> str:
        return f"Worker({self.index} {self.server!r})"

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # ---- reloads ---------------------------------------------------------------------

    def apply(self, table: RouteTable, source: str) -> None:
        old = self.server.table.generation
        self.server.apply_table(table)
        log.info(
            "route table generation %d in force (was %d) from %s", table.generation, old, source
        )

    def reload_routes(self, why: str) -> None:
        path = self.args.routes
        if path is None:
            return
        self.routes_sig = signature(path)
        try:
            table = load_routes(path)
        except ConfigError as error:
            log.error(
                "routes not reloaded (%s), generation %d stays in force: %s",
                why,
                self.server.table.generation,
                error,
            )
            return
        self.apply(table, f"{path} ({why})")

    def reload_keys(self, why: str) -> None:
        path = self.args.keys
        if path is None:
            return
        self.keys_sig = signature(path)
        try:
            keyring = load_keys(path)
        except ConfigError as error:
            log.error("keys not reloaded (%s), the old keys stay in force: %s", why, error)
            return
        self.server.codec = PinCodec(keyring)
        self.server.epoch += 1
        log.info("keys reloaded from %s (%s): %s sign", path, why, keyring.keys[0].key_id)

    def on_sighup(self) -> None:
        self.reload_keys("SIGHUP")
        self.reload_routes("SIGHUP")

    async def watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.args.watch_interval)
            if self.args.keys and signature(self.args.keys) != self.keys_sig:
                self.reload_keys("file changed")
            if self.args.routes and signature(self.args.routes) != self.routes_sig:
                self.reload_routes("file changed")

    async def tick(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            self.server.sweep()
            drain.close_due_tunnels(self.server, clock.wall, clock.mono)
            ticks += 1
            if ticks % 10 == 0 and self.server.options.metrics_dir is not None:
                metrics.publish_metrics(self.server)  # every second, for worker 0's /metrics
            if ticks % 100 == 0:  # forget sessions idle past their timeout (bounded memory)
                now = time.time()
                for rt in self.server.apps.values():
                    for stats in rt.stats.values():
                        stats.live_sessions(now, rt.idle)

    # ---- life ------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        server = self.server
        server.loop = loop
        health.starter(server)
        link = None
        args = self.args
        table = self.initial
        if args.controller:
            from skewless.router.controller_link import ControllerLink

            router_id = args.id or socket.gethostname()
            if args.workers > 1:
                router_id = f"{router_id}-w{self.index}"
            cache = args.cache or default_state_dir() / f"router-{args.id or 'default'}-routes.json"
            link = ControllerLink(
                server,
                args.controller,
                args.token,
                router_id,
                Path(cache),
                args.report_interval,
                self.apply,
                write_cache=self.index == 0,
            )
            cached = link.load_cache()
            if cached is not None:
                table = cached
                log.info(
                    "serving the cached route table generation %d until the controller answers",
                    cached.generation,
                )
        if self.state is not None:
            handed = handover.table_of(self.state)
            if handed is not None:
                table = handed
                # a routes file is the source of truth: read it again at the next watch
                # tick (it may have changed after the old router last read it)
                self.routes_sig = None
            handover.restore_stats(server, self.state)
        server.apply_table(table)
        if self.state is not None:
            n = handover.restore_instances(server, self.state)
            log.info("took over generation %d and the state of %d instance(s)", table.generation, n)
        self.stop = stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        for sock in self.socks:  # again for sockets taken over from an older router
            limit_unsent(sock, self.args.send_lowat)
        listeners = [
            await loop.create_server(server.accept, sock=sock, backlog=4096) for sock in self.socks
        ]
        if server.options.metrics_dir is not None:
            metrics.publish_metrics(server)
        # What exists now (modules, the table, the admin app's classes: ~10^5 objects)
        # lives as long as the worker: out of the collector's sight, so that a full
        # collection under load walks the connections' objects only, not all of these
        # (a full collection took 10-50 ms during the slow-read attack of
        # bench/slow_clients.py before; docs/decisions/router-gc.md).
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        if self.on_serving is not None:
            self.on_serving()
        if self.handover is not None:
            try:
                await loop.run_in_executor(None, confirm_ready, self.handover)
            except (OSError, UpgradeError) as error:
                log.error("upgrade: the old router did not confirm (%s); serving anyway", error)
            self.handover = None
        if self.upgrade_path:
            self.listen_for_upgrades(loop)
        if self.state_sock is not None:
            loop.add_reader(self.state_sock.fileno(), self.answer_state)
        loop.add_signal_handler(signal.SIGUSR2, self.spawn_successor)
        self.spawn(self.tick(), "tick")
        if args.routes or args.keys:
            self.spawn(self.watch_files(), "watch-files")
        admin = None
        if self.admin_sock is not None:
            from skewless.router.admin import make_admin_server, serve_admin

            admin = make_admin_server(server, args.token)
            self.spawn(serve_admin(admin, self.admin_sock), "admin")
        if link is not None:
            self.spawn(link.watch(), "controller-watch")
            self.spawn(link.report(), "controller-report")
        await stop.wait()
        if self.handed_over:
            # the successor reports and serves the admin listener from now on
            for task in list(self.tasks):
                if task.get_name() in ("controller-report", "admin"):
                    task.cancel()
        if self.upgrade is not None:
            self.upgrade.close(unlink=not self.handed_over)
        await self.drain(listeners)
        if admin is not None:
            admin.should_exit = True
            await asyncio.sleep(0)
        for task in list(self.tasks):
            task.cancel()
        for inst in server.instances.values():
            inst.removed = True
            inst.close_idle()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return 0

    async def drain(self, listeners: list[asyncio.Server]) -> None:
        """Stop accepting, let in-flight exchanges finish (bounded), close the rest."""
        server = self.server
        server.draining = True
        for listener in listeners:
            listener.close()
        log.info("draining: %d exchanges in flight", server.busy())
        deadline = time.monotonic() + server.options.drain_timeout
        while time.monotonic() < deadline:
            if not server.busy() and not self.close_idle():
                break
            await asyncio.sleep(0.05)
        if drain.close_all_tunnels(server, time.monotonic()):
            log.info("drain deadline: WebSockets get 1001")
            end = time.monotonic() + 3 * ws_tunnel.GRACE
            while time.monotonic() < end:
                if not drain.close_all_tunnels(server, time.monotonic()):
                    break
                await asyncio.sleep(0.05)
        left = server.busy()
        if left:
            log.warning("drain timeout: closing %d connections still busy", left)
        for client in list(server.clients):
            client.abort() if client.active is not None or client.tunnel else client.close()
        log.info("drained; exiting")

    def close_idle(self) -> int:
        """Close keep-alive connections idle for ``IDLE_GRACE``; count the other
        connections that are not busy yet (idle for less, or sending a head).

        Idle time counts from when the drain first saw the connection idle, on the
        fresh clock, not from ``client.idle_since``: a connection accepted a moment
        before the drain has its ``idle_since`` set back by ``fresh_shift`` (so the
        sweep gives it the header timeout), which made it "idle for a minute" and
        closed before its first request arrived (the client saw EOF instead of a
        response); and the coarse clock a loaded process advances late could make a
        few milliseconds look like a second. A connection whose next request already
        sits in the kernel buffer (this loop has not read it yet) is not idle."""
        now = time.monotonic()
        seen = self.idle_seen
        young = 0
        for client in list(self.server.clients):
            if client.active is not None or client.tunnel is not None or client.closing:
                seen.pop(client, None)
                continue
            idle = client.awaiting_head and not client.head_bytes
            if idle and not client.paused and _has_input(client):
                idle = False  # this loop reads and answers it next (``Connection: close``)
            if not idle:
                seen.pop(client, None)
                young += 1
                continue
            mark = (client.idle_since, now)
            first = seen.setdefault(client, mark)
            if first[0] != client.idle_since:  # answered something since: idle anew
                seen[client] = first = mark
            if now - first[1] >= IDLE_GRACE:
                seen.pop(client, None)
                client.close()
            else:
                young += 1
        return young

    # ---- hitless upgrade ---------------------------------------------------------------

    def listen_for_upgrades(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.upgrade_path is not None

        def provide() -> tuple[list[socket.socket], socket.socket | None, dict[str, Any]]:
            async def snap() -> dict[str, Any]:
                return handover.snapshot(self.server)

            state = asyncio.run_coroutine_threadsafe(snap(), loop).result(10)
            if self.args.keys is None:  # a random key: pins survive only if it travels
                state["keys"] = handover.dump_keys(self.server.codec.keyring)
            return self.socks, self.admin_sock, {"workers": [state]}

        def handed_over() -> None:
            loop.call_soon_threadsafe(self.hand_over)

        self.upgrade = UpgradeListener(self.upgrade_path, provide, handed_over)
        try:
            self.upgrade.bind()
        except UpgradeError as error:
            log.error("%s; hitless upgrade is off for this process", error)
            self.upgrade = None
            return
        self.upgrade.start()
        log.info("upgrade socket %s (a new router takes over with --takeover)", self.upgrade_path)

    def hand_over(self) -> None:
        self.handed_over = True
        self.stop.set()

    def answer_state(self) -> None:
        """The supervisor asks for this worker's state (a takeover is under way)."""
        sock = self.state_sock
        assert sock is not None
        try:
            line = sock.recv(64)
        except BlockingIOError:
            return
        if not line:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            return
        state = handover.snapshot(self.server)
        if self.args.keys is None:  # a random key: pins survive only if it travels
            state["keys"] = handover.dump_keys(self.server.codec.keyring)
        blob = json.dumps(state).encode() + b"\n"
        sock.setblocking(True)
        try:
            sock.sendall(blob)
        finally:
            sock.setblocking(False)

    def spawn_successor(self) -> None:
        """SIGUSR2 on a single-process router: start a router that takes over from us."""
        from skewless.router.upgrade import spawn_successor

        if self.upgrade is None or self.handed_over:
            log.error("SIGUSR2 ignored: no upgrade socket, or already handed over")
            return
        self.successor = spawn_successor(self.args.argv, self.upgrade.path)


def _has_input(client: Any) -> bool:
    """Bytes from the client wait in the kernel buffer, not yet read by this loop."""
    transport = client.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), sock.family, socket.SOCK_STREAM) as dup:
            return bool(dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the socket is gone: idle as before
        return False
