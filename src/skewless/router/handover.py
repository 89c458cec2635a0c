"""The state one router process hands to the next in a hitless upgrade (JSON), and its
restoration: the route table in force, each instance's health, ejection and drain clock,
and the per-version counters and pinned sessions.

Without it the new process would start with every instance "up" (sending work to an
instance its predecessor had found dead), forget when each draining instance started to
drain (so its WebSockets would live past their deadline), and report no live sessions
for the old version to the controller (which may then retire it under its users).
Monotonic times do not cross processes: they travel as durations.
"""

from __future__ import annotations

import time
from typing import Any

from skewless.core.errors import ConfigError
from skewless.core.pin import Keyring, SigningKey
from skewless.core.route_table import RouteTable, dump_route_table, parse_route_table
from skewless.router.metrics import VersionStats
from skewless.router.server import RouterServer


def snapshot(server: RouterServer) -> dict[str, Any]:
    mono = time.monotonic()
    return {
        "table": dump_route_table(server.table),
        "instances": [
            {
                "key": key,
                "address": address,
                "healthy": inst.healthy,
                "streak": inst.streak,
                "failures": inst.consecutive_failures,
                "ejected_for": max(0.0, inst.ejected_until - mono) if inst.ejected_until else 0.0,
                "drain_since": inst.drain_since,
                "drain_at": inst.drain_at,
            }
            for (key, address), inst in server.instances.items()
        ],
        "stats": [
            {
                "app": s.app,
                "version": s.version,
                "requests": s.requests,
                "errors_5xx": s.errors_5xx,
                "connect_failures": s.connect_failures,
                "by_status": {str(k): v for k, v in s.by_status.items()},
                "buckets": s.buckets,
                "latency_sum": s.latency_sum,
                "last_pinned_at": s.last_pinned_at,
                "sessions": s.sessions,
            }
            for s in server.stats.values()
        ],
    }


def table_of(state: dict[str, Any]) -> RouteTable | None:
    try:
        return parse_route_table(state.get("table"))
    except ConfigError:
        return None


def restore_stats(server: RouterServer, state: dict[str, Any]) -> None:
    """Before the first ``apply_table``: the table's versions then reuse these counters."""
    for row in state.get("stats", []):
        s = VersionStats(row["app"], row["version"])
        s.requests = int(row["requests"])
        s.errors_5xx = int(row["errors_5xx"])
        s.connect_failures = int(row["connect_failures"])
        s.by_status = {int(k): int(v) for k, v in row["by_status"].items()}
        if len(row["buckets"]) == len(s.buckets):
            s.buckets = [int(n) for n in row["buckets"]]
        s.latency_sum = float(row["latency_sum"])
        s.last_pinned_at = row["last_pinned_at"]
        s.sessions = {str(k): float(v) for k, v in row["sessions"].items()}
        server.stats[(s.app, s.version)] = s


def restore_instances(server: RouterServer, state: dict[str, Any]) -> int:
    """After the first ``apply_table``: health, ejection and drain clocks by instance."""
    mono = time.monotonic()
    apps = set()
    restored = 0
    for row in state.get("instances", []):
        inst = server.instances.get((row["key"], row["address"]))
        if inst is None:
            continue
        inst.healthy = bool(row["healthy"])
        inst.streak = int(row["streak"])
        inst.consecutive_failures = int(row["failures"])
        ejected_for = float(row["ejected_for"])
        inst.ejected_until = mono + ejected_for if ejected_for > 0 else 0.0
        if inst.state == "draining" and row["drain_since"]:
            inst.drain_since = float(row["drain_since"])
            inst.drain_at = float(row["drain_at"])
        apps.add(inst.app)
        restored += 1
    for app in apps:
        server.recompile(app)
    return restored


def dump_keys(keyring: Keyring) -> list[list[str]]:
    """Only for the random key of a router without ``--keys`` (the upgrade socket is
    mode 0600 and checks the peer's uid)."""
    return [[k.key_id, k.secret.hex()] for k in keyring.keys]


def keys_of(state: dict[str, Any]) -> Keyring | None:
    workers = state.get("workers") or [{}]
    rows = workers[0].get("keys") if isinstance(workers[0], dict) else None
    if not rows:
        return None
    return Keyring(keys=tuple(SigningKey(key_id=k, secret=bytes.fromhex(v)) for k, v in rows))
