"""Rich renderings of the controller's answers, shared by status, deploy --wait, hosts,
releases and events. The answers are read defensively (``.get``): the controller may add
fields, and a missing one shows as a dash rather than a traceback."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

TERMINAL = frozenset({"succeeded", "rolled_back", "failed", "aborted"})

_STATE_STYLE = {
    "ready": "green",
    "live": "green",
    "succeeded": "green",
    "progressing": "cyan",
    "starting": "cyan",
    "pending": "cyan",
    "draining": "yellow",
    "paused": "yellow",
    "retired": "dim",
    "stopped": "dim",
    "failed": "red",
    "aborted": "red",
    "rolled_back": "magenta",
}


def styled(state: Any) -> Text:
    value = "-" if state is None else str(state)
    return Text(value, style=_STATE_STYLE.get(value, ""))


def dash(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def clock(value: Any) -> str:
    if isinstance(value, int | float):
        return time.strftime("%H:%M:%S", time.localtime(value))
    return dash(value)


def rollout_line(app: str, rollout: Mapping[str, Any] | None) -> Text:
    line = Text(app, style="bold")
    if not rollout:
        line.append("  no rollout")
        return line
    line.append("  rollout ")
    line.append_text(styled(rollout.get("state")))
    line.append(f"  {dash(rollout.get('strategy'))}")
    if rollout.get("from"):
        line.append(f"  {rollout['from']} -> {dash(rollout.get('to'))}")
    else:
        line.append(f"  to {dash(rollout.get('to'))}")
    if rollout.get("reason"):
        line.append(f"\n  {rollout['reason']}", style="italic")
    return line


def versions_table(status: Mapping[str, Any]) -> Table:
    table = Table(title=None, expand=False)
    for column in ("version", "state", "weight", "ready", "sessions", "load (req/s)"):
        table.add_column(column)
    for v in status.get("versions") or []:
        instances = v.get("instances") or []
        ready = sum(1 for i in instances if i.get("state") == "ready")
        table.add_row(
            dash(v.get("version")),
            styled(v.get("state")),
            f"{float(v.get('weight') or 0.0):.2f}",
            f"{ready}/{len(instances)}",
            dash(v.get("sessions")),
            dash(v.get("load", v.get("rps"))),
        )
    return table


def instances_table(status: Mapping[str, Any]) -> Table:
    table = Table(expand=False)
    for column in ("instance", "host", "version", "state", "address"):
        table.add_column(column)
    for v in status.get("versions") or []:
        for i in v.get("instances") or []:
            table.add_row(
                dash(i.get("id")),
                dash(i.get("host")),
                dash(v.get("version")),
                styled(i.get("state")),
                dash(i.get("address")),
            )
    return table


def app_status(status: Mapping[str, Any]) -> RenderableType:
    return Group(
        rollout_line(str(status.get("app", "?")), status.get("rollout")),
        versions_table(status),
        instances_table(status),
    )


def apps_table(apps: list[Any]) -> Table:
    table = Table(expand=False)
    for column in ("app", "current", "versions (weight)", "rollout", "to", "reason"):
        table.add_column(column)
    for app in apps:
        if isinstance(app, str):
            table.add_row(app, "-", "-", "-", "-", "-")
            continue
        versions = app.get("versions") or []
        shown = ", ".join(
            f"{v.get('version')} ({float(v.get('weight') or 0):.2f})"
            for v in versions
            if v.get("state") != "retired"
        )
        rollout = app.get("rollout") or {}
        table.add_row(
            dash(app.get("app", app.get("name"))),
            dash(app.get("version")),
            shown or "-",
            styled(rollout.get("state")) if rollout else Text("-"),
            dash(rollout.get("to")),
            dash(rollout.get("reason")),
        )
    return table


def event_line(event: Mapping[str, Any]) -> str:
    return (
        f"{clock(event.get('time'))}  {dash(event.get('app')):<10} "
        f"{dash(event.get('kind')):<18} {dash(event.get('message'))}"
    )


def hosts_table(hosts: list[Any]) -> Table:
    table = Table(expand=False)
    for column in ("host", "alive", "slots", "instances", "generation", "last report"):
        table.add_column(column)
    for h in hosts:
        if isinstance(h, str):
            table.add_row(h, "-", "-", "-", "-", "-")
            continue
        instances = h.get("instances")
        count = len(instances) if isinstance(instances, list) else instances
        alive = h.get("alive")
        applied, desired = h.get("applied_generation"), h.get("desired_generation")
        generation = (
            f"{dash(applied)}/{dash(desired)}" if desired is not None else dash(h.get("generation"))
        )
        table.add_row(
            dash(h.get("id", h.get("host_id"))),
            Text(
                "-" if alive is None else ("yes" if alive else "no"),
                style="green" if alive else "red",
            ),
            dash(h.get("slots")),
            dash(count),
            generation,
            clock(h.get("last_report_at", h.get("last_report"))),
        )
    return table


def releases_table(releases: list[Any]) -> Table:
    table = Table(expand=False)
    for column in ("version", "created", "state", "weight", "command"):
        table.add_column(column)
    for r in releases:
        spec = r.get("spec") if isinstance(r.get("spec"), dict) else {}
        table.add_row(
            dash(r.get("version")),
            clock(r.get("created_at", r.get("created"))),
            styled(r.get("state")),
            dash(r.get("weight")),
            dash(spec.get("command", r.get("command"))),
        )
    return table


def unwrap(answer: Any, key: str) -> list[Any]:
    """``{"apps": [...]}`` or ``[...]`` -> the list."""
    if isinstance(answer, dict):
        answer = answer.get(key, [])
    return answer if isinstance(answer, list) else []
