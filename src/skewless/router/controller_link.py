"""The router's link to the controller (``--controller URL``): watch the route table by
long-poll, cache it on disk, and post the router report every few seconds.

The cache is written atomically (temp file, fsync, rename) each time a new table
arrives; a router restarted while the controller is down serves the cached table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from skewless.core.errors import ConfigError
from skewless.core.route_table import RouteTable, parse_route_table
from skewless.router.server import RouterServer
from skewless.router.sources import write_atomic

log = logging.getLogger("skewless.router")


def build_report(server: RouterServer, router_id: str) -> dict[str, Any]:
    now = time.time()
    apps = []
    for name, rt in server.apps.items():
        versions = [s.report(now, rt.idle) for s in rt.stats.values()]
        apps.append({"app": name, "versions": versions})
    return {
        "router_id": router_id,
        "generation": server.table.generation,
        "time": now,
        "apps": apps,
        "instances": [
            {
                "id": i.id,
                "app": i.app,
                "version": i.version,
                "inflight": i.inflight,
                "healthy": i.up,
            }
            for i in server.instances.values()
        ],
    }


class ControllerLink:
    def __init__(
        self,
        server: RouterServer,
        url: str,
        token: str | None,
        router_id: str,
        cache: Path,
        report_interval: float,
        apply: Callable[[RouteTable, str], None],
        write_cache: bool = True,
    ) -> None:
        self.server = server
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.router_id = router_id
        self.cache = cache
        self.report_interval = report_interval
        self.apply = apply
        self.write_cache = write_cache
        self.known: int | None = None

    def __repr__(self) -> str:
        return f"ControllerLink({self.url} known={self.known})"

    def load_cache(self) -> RouteTable | None:
        try:
            obj = json.loads(self.cache.read_text(encoding="utf-8"))
            return parse_route_table(obj)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ConfigError) as error:
            log.warning("ignoring the cached route table %s: %s", self.cache, error)
            return None

    async def watch(self) -> None:
        backoff = 0.5
        failing = False
        async with httpx.AsyncClient(headers=self.headers) as client:
            while True:
                params: dict[str, Any] = {"wait": 25}
                if self.known is not None:
                    params["generation"] = self.known
                try:
                    r = await client.get(f"{self.url}/v1/routes", params=params, timeout=40)
                except httpx.HTTPError as error:
                    if not failing:
                        log.warning(
                            "controller %s unreachable (%s); serving generation %d",
                            self.url,
                            error.__class__.__name__,
                            self.server.table.generation,
                        )
                    failing = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if r.status_code == 204:
                    failing, backoff = False, 0.5
                    continue
                if r.status_code != 200:
                    log.warning("controller answered %d to GET /v1/routes", r.status_code)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                failing, backoff = False, 0.5
                try:
                    obj = r.json()
                    table = parse_route_table(obj)
                except (ValueError, ConfigError) as error:
                    log.error(
                        "controller sent an invalid route table, keeping generation %d: %s",
                        self.server.table.generation,
                        error,
                    )
                    await asyncio.sleep(1.0)
                    continue
                if table.generation == self.known:  # nothing new: do not spin on it
                    await asyncio.sleep(1.0)
                    continue
                self.known = table.generation
                self.apply(table, self.url)
                if self.write_cache:
                    try:
                        await asyncio.to_thread(write_atomic, self.cache, json.dumps(obj))
                    except OSError as error:
                        log.warning("cannot write the route table cache %s: %s", self.cache, error)

    async def report(self) -> None:
        async with httpx.AsyncClient(headers=self.headers) as client:
            failing = False
            while True:
                await asyncio.sleep(self.report_interval)
                body = build_report(self.server, self.router_id)
                try:
                    r = await client.post(
                        f"{self.url}/v1/routers/{self.router_id}/report", json=body, timeout=5
                    )
                    if r.status_code >= 300 and not failing:
                        log.warning("controller answered %d to the router report", r.status_code)
                    failing = r.status_code >= 300
                except httpx.HTTPError as error:
                    if not failing:
                        log.warning("cannot post the router report: %s", error.__class__.__name__)
                    failing = True
