"""``skewless deploy APP VERSION --command "ARGV with {port}" [...] [--wait]``.

Builds the release spec and rollout options from the flags over the app's defaults in
``skewless.toml`` (``build_body`` is pure), posts it to ``POST /v1/apps/APP/deploy`` (the
first deploy of an app creates it) and, with ``--wait``, follows the rollout until it
ends: exit 0 when it succeeded, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from skewless.commands import config as cfg
from skewless.commands.client import (
    Controller,
    add_target_arguments,
    run_command,
    target_from_args,
)
from skewless.core.errors import ClientError, ConfigError
from skewless.core.model import STRATEGIES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless deploy",
        description="Release VERSION of APP (the first deploy of an app creates it).",
    )
    p.add_argument("app", metavar="APP")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--command", metavar="ARGV", help="command line with {port}, split like a shell")
    p.add_argument("--health", metavar="PATH", help="health path (default: the controller's)")
    p.add_argument("--instances", type=int, metavar="N", help="instances of the new version")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--batch", metavar="N|P%", help="rolling: hosts moved at once (or a share)")
    p.add_argument("--session-idle-timeout", type=float, metavar="SECONDS")
    p.add_argument("--session-max-lifetime", type=float, metavar="SECONDS")
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="turn session pinning off for this app (a control run: shows version skew)",
    )
    p.add_argument("--capacity", type=float, metavar="RPS", help="load one instance carries")
    p.add_argument(
        "--smoke", action="append", metavar="PATH", help="smoke check sent before traffic (repeat)"
    )
    p.add_argument("--max-unavailable", metavar="N|P%", help="most instances out at once")
    p.add_argument("--max-surge", metavar="N|P%", help="extra instances while rolling out")
    p.add_argument(
        "--steps", metavar="W,W,...", help="canary shares of new sessions, e.g. 0.1,0.5,1"
    )
    p.add_argument("--env", action="append", metavar="K=V", help="environment variable (repeat)")
    p.add_argument("--drain-timeout", type=float, metavar="SECONDS")
    p.add_argument("--wait", action="store_true", help="follow the rollout until it ends")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (the rollout goes on)",
    )
    add_target_arguments(p)
    return p


def _positive(name: str, value: float | None, minimum: float) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum:g}, not {value:g}")


def build_body(args: argparse.Namespace, defaults: cfg.AppDefaults) -> dict[str, Any]:
    """The deploy request body: flags over ``skewless.toml`` defaults. Pure."""
    if not _NAME.match(args.app):
        raise ConfigError(f"APP {args.app!r} must be letters, digits, '.', '_' or '-'")
    if not _NAME.match(args.version):
        raise ConfigError(f"VERSION {args.version!r} must be letters, digits, '.', '_' or '-'")
    if args.command is not None:
        command = cfg.parse_command("--command", args.command)
    elif defaults.command is not None:
        command = defaults.command
    else:
        raise ConfigError(
            f"--command is required (or set command in [apps.{args.app}] of skewless.toml), "
            'e.g. --command "python app.py --port {port}"'
        )
    if not any("{port}" in part for part in command):
        raise ConfigError("--command must contain {port} where the instance's port goes")
    _positive("--instances", args.instances, 1)
    counts = {
        name: cfg.parse_count(f"--{name.replace('_', '-')}", getattr(args, name), minimum)
        for name, minimum in (("batch", 1), ("max_unavailable", 0), ("max_surge", 0))
        if getattr(args, name) is not None
    }
    for name in ("capacity", "session_idle_timeout", "session_max_lifetime", "drain_timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, not {value:g}")

    def pick(name: str) -> Any:
        value = counts.get(name, getattr(args, name))
        return value if value is not None else getattr(defaults, name)

    body: dict[str, Any] = {"version": args.version, "command": list(command)}
    env = dict(defaults.env)
    for item in args.env or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r} must look like KEY=VALUE")
        env[key] = value
    if env:
        body["env"] = env
    health = cfg.parse_path("--health", args.health) if args.health else defaults.health
    if health:
        body["health"] = {"path": health}
    smoke = (
        tuple(cfg.parse_path("--smoke", s) for s in args.smoke) if args.smoke else defaults.smoke
    )
    if smoke:
        body["smoke"] = [{"path": path, "status": 200} for path in smoke]
    for name in (
        "instances",
        "strategy",
        "batch",
        "capacity",
        "max_unavailable",
        "max_surge",
        "drain_timeout",
    ):
        value = pick(name)
        if value is not None:
            body[name] = value
    steps = cfg.parse_steps("--steps", args.steps) if args.steps else defaults.steps
    if steps:
        body["steps"] = list(steps)
    session: dict[str, Any] = {}
    idle = pick("session_idle_timeout")
    if idle is not None:
        session["idle_timeout"] = idle
    lifetime = pick("session_max_lifetime")
    if lifetime is not None:
        session["max_lifetime"] = lifetime
    if args.no_pin:
        session["pin"] = False
    elif defaults.session_pin is not None:
        session["pin"] = defaults.session_pin
    if session:
        body["session"] = session
    return body


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        defaults = cfg.load_config(Path.cwd()).get(args.app, cfg.AppDefaults())
        request = build_body(args, defaults)
        if args.timeout is not None and not args.wait:
            raise ClientError("--timeout only makes sense with --wait")
        with Controller(target_from_args(args)) as api:
            from skewless.commands.follow import follow_rollout, last_event_id

            after = last_event_id(api, args.app) if args.wait else None
            answer = api.post(f"/v1/apps/{args.app}/deploy", request) or {}
            rollout = answer.get("rollout") if isinstance(answer, dict) else None
            rollout = rollout if isinstance(rollout, dict) else {}
            print(
                f"deploying {args.app} {args.version}"
                + (f" ({rollout['strategy']})" if rollout.get("strategy") else "")
                + ("" if args.wait else f": follow it with `skewless status {args.app}`"),
                file=sys.stderr if args.wait else sys.stdout,
            )
            if not args.wait:
                return 0
            return follow_rollout(
                api,
                app=args.app,
                version=args.version,
                rollout_id=rollout.get("id"),
                after=after,
                timeout=args.timeout,
            )

    return run_command("deploy", body)
