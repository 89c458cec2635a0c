"""One router process: the listener, the timers, reloads, the admin listener, the
controller link, and the drain on SIGTERM.

Every background task belongs to the worker's task set and is cancelled when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from skewless.router import health
from skewless.router.client import ClientProtocol
from skewless.router.server import TICK, Options, RouterServer
from skewless.router.sources import default_state_dir, load_keys, load_routes, signature

log = logging.getLogger("skewless.router")


class Worker:
    def __init__(
        self,
        args: argparse.Namespace,
        index: int,
        codec: PinCodec,
        table: RouteTable,
        sock: socket.socket,
        admin_sock: socket.socket | None,
    ) -> None:
        self.args = args
        self.index = index
        self.sock = sock
        self.admin_sock = admin_sock
        options = Options(
            header_timeout=args.header_timeout,
            keepalive_timeout=args.keepalive_timeout,
            upstream_timeout=args.upstream_timeout,
            connect_timeout=args.connect_timeout,
            max_head=args.max_header_size,
            drain_timeout=args.drain_timeout,
            worker=index,
            secure_cookies=args.secure_cookies,
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
            ticks += 1
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
        server.apply_table(table)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        listener = await loop.create_server(
            lambda: ClientProtocol(server), sock=self.sock, backlog=4096
        )
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
        await self.drain(listener)
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

    async def drain(self, listener: asyncio.Server) -> None:
        """Stop accepting, let in-flight exchanges finish (bounded), close the rest."""
        server = self.server
        server.draining = True
        listener.close()
        log.info("draining: %d exchanges in flight", server.busy())
        for client in list(server.clients):
            if client.active is None and client.tunnel is None:
                client.close()
        deadline = time.monotonic() + server.options.drain_timeout
        while server.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            for client in list(server.clients):
                if client.active is None and client.tunnel is None:
                    client.close()
        left = server.busy()
        if left:
            log.warning("drain timeout: closing %d connections still busy", left)
        for client in list(server.clients):
            client.abort() if client.active is not None or client.tunnel else client.close()
        log.info("drained; exiting")
