"""What routers and agents read: the route table and each host's desired state, built
from the store, and published with a generation that grows exactly when content changes.

Generation rules (docs/controller.md):

- ``publish_table`` builds the table body without its generation and compares it with
  the last published body; only when they differ does it bump ``table_generation`` and
  store the new body. So the generation changes if and only if what routers see changes
  (an engine action, an app's session settings, an instance's reported address), and it
  never goes back, across restarts too (it lives in the store).
- ``publish_desired`` does the same per host with the host's ``desired_generation``.
- Both are called inside the transaction that changed their inputs, so a watcher never
  sees an effect whose journal entry is not ``done``.
"""

from __future__ import annotations

import json
from typing import Any

from skewless.controller.store import InstanceRow, Store, iter_report_instances

EMPTY_TABLE: dict[str, Any] = {"generation": 0, "apps": []}


def agent_instances(store: Store) -> dict[str, tuple[str, dict[str, Any]]]:
    """Instance id -> (host id, entry of that host's last agent report)."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for host in store.list_hosts():
        for item in iter_report_instances(host.report):
            seen[item["id"]] = (host.id, item)
    return seen


def session_json(app: str, session: dict[str, Any]) -> dict[str, Any]:
    return {
        "cookie": f"skewless-{app}",
        "header": "Skewless-Version",
        "idle_timeout": session.get("idle_timeout", 1800.0),
        "max_lifetime": session.get("max_lifetime", 43200.0),
        "pin": session.get("pin", True),
    }


DEFAULT_DRAIN_TIMEOUT = 30.0
"""A release's ``drain_timeout`` when its spec has none (the deploy default)."""
MAX_DRAIN_TIMEOUT = 604800.0
"""The most a router accepts in a table (docs/protocol.md): a week."""


def release_drain_timeout(spec: dict[str, Any] | None) -> float:
    """Seconds a draining instance of this release keeps its long-lived connections."""
    value = (spec or {}).get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return DEFAULT_DRAIN_TIMEOUT
    return min(float(value), MAX_DRAIN_TIMEOUT)


def build_table(store: Store) -> dict[str, Any]:
    """The route table body (without ``generation``)."""
    reported = agent_instances(store)
    apps = []
    for app in store.list_apps():
        in_table: dict[str, list[InstanceRow]] = {}
        for inst in store.list_instances(app=app.name):
            if inst.table_state in ("ready", "draining"):
                in_table.setdefault(inst.version, []).append(inst)
        versions = []
        for v in store.list_versions(app.name):
            members = in_table.get(v.version, [])
            # A retired version stays listed while its instances still finish their work,
            # so a router can tell "retired" (re-pin) from "unknown".
            if v.state == "retired" and not members:
                continue
            release = store.get_release(app.name, v.version)
            health = (release.spec.get("health") if release else None) or {}
            drain_timeout = release_drain_timeout(release.spec if release else None)
            instances = []
            for inst in members:
                entry = reported.get(inst.id, ("", {}))[1]
                address = entry.get("address")
                if not isinstance(address, str) or not address:
                    continue
                state = (
                    "ready" if inst.table_state == "ready" and v.state != "retired" else "draining"
                )
                item: dict[str, Any] = {"id": inst.id, "address": address, "state": state}
                if state == "draining" and inst.drained_at is not None:
                    # When the router closes its tunnels (1001): the moment the engine
                    # drained it (stored, so the same after a restart) + drain_timeout.
                    item["drain_deadline"] = round(inst.drained_at + drain_timeout, 3)
                instances.append(item)
            versions.append(
                {
                    "version": v.version,
                    "state": v.state,
                    "weight": v.weight,
                    "health": {
                        "path": health.get("path", "/healthz"),
                        "interval": health.get("interval", 2.0),
                        "timeout": health.get("timeout", 2.0),
                    },
                    "drain_timeout": drain_timeout,
                    "instances": instances,
                }
            )
        apps.append(
            {
                "name": app.name,
                "hosts": app.session.get("hosts") or ["*"],
                "session": session_json(app.name, app.session),
                "versions": versions,
            }
        )
    return {"apps": apps}


def publish_table(store: Store) -> int:
    """Publish the route table if it changed; returns the current generation."""
    with store.transaction():
        body = build_table(store)
        old = store.get_published("routes")
        if old is not None:
            old_body = json.loads(old)
            old_gen = old_body.pop("generation")
            if old_body == body:
                return int(old_gen)
        gen = store.bump_table_generation()
        store.set_published("routes", json.dumps({"generation": gen, **body}))
        return gen


def route_table(store: Store) -> dict[str, Any]:
    raw = store.get_published("routes")
    return json.loads(raw) if raw else dict(EMPTY_TABLE)


def build_desired(store: Store, host_id: str) -> list[dict[str, Any]]:
    """A host's desired instances. An instance asked to stop stays listed as ``stopped``
    until the host's agent reports it stopped (or no longer lists it); then it is left
    out, and the agent forgets it."""
    out = []
    releases: dict[tuple[str, str], dict[str, Any]] = {}
    host = store.get_host(host_id)
    reported = {
        i["id"]: i.get("state") for i in iter_report_instances(host.report if host else None)
    }
    for inst in store.list_instances(host=host_id):
        if (
            inst.desired == "stopped"
            and host is not None
            and host.report is not None
            and reported.get(inst.id, "stopped") in ("stopped", "failed")
        ):
            continue
        key = (inst.app, inst.version)
        if key not in releases:
            rel = store.get_release(inst.app, inst.version)
            releases[key] = rel.spec if rel else {}
        spec = releases[key]
        health = spec.get("health") or {}
        out.append(
            {
                "id": inst.id,
                "app": inst.app,
                "version": inst.version,
                "command": spec.get("command", []),
                "env": spec.get("env", {}),
                "health": {
                    "path": health.get("path", "/healthz"),
                    "timeout": health.get("timeout", 2.0),
                    "status": health.get("status", 200),
                    "interval": health.get("interval", 2.0),
                },
                "drain_timeout": release_drain_timeout(spec),
                "desired": inst.desired,
            }
        )
    return out


def publish_desired(store: Store, host_id: str) -> int:
    name = f"desired:{host_id}"
    with store.transaction():
        instances = build_desired(store, host_id)
        old = store.get_published(name)
        if old is not None:
            old_body = json.loads(old)
            if old_body["instances"] == instances:
                return int(old_body["generation"])
        gen = store.bump_host_generation(host_id)
        store.set_published(name, json.dumps({"generation": gen, "instances": instances}))
        return gen


def desired_state(store: Store, host_id: str) -> dict[str, Any]:
    raw = store.get_published(f"desired:{host_id}")
    return json.loads(raw) if raw else {"generation": 0, "instances": []}
