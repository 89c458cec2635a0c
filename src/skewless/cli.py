"""The ``skewless`` command: a thin dispatcher.

Each subcommand lives in its own module with a ``main(argv) -> int`` function and is
imported only when used, so that ``skewless router`` never pays for FastAPI and
``skewless status`` never pays for uvloop.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help). Modules own their argument parsing.
COMMANDS: dict[str, tuple[str, str]] = {
    "router": ("skewless.router.cli", "run the HTTP router (data plane)"),
    "agent": ("skewless.agent.cli", "run a host agent (supervises app instances)"),
    "controller": ("skewless.controller.cli", "run the controller (control plane)"),
    "up": ("skewless.commands.up", "run a whole local fleet in the foreground"),
    "deploy": ("skewless.commands.deploy", "release a version of an app"),
    "status": ("skewless.commands.status", "show apps, versions, instances, rollouts"),
    "pause": ("skewless.commands.pause", "pause an app's rollout"),
    "resume": ("skewless.commands.resume", "resume an app's rollout"),
    "abort": ("skewless.commands.abort", "abort an app's rollout"),
    "rollback": ("skewless.commands.rollback", "roll an app back to its previous release"),
    "events": ("skewless.commands.events", "show (or follow) the event log"),
    "hosts": ("skewless.commands.hosts", "list hosts and their agents"),
    "releases": ("skewless.commands.releases", "list an app's releases"),
    "loadtest": ("skewless.demo.loadtest", "simulate users walking a multi-page flow"),
    "demo": ("skewless.demo.story", "the whole story: a fleet, users, two releases"),
}


def _usage() -> str:
    lines = ["usage: skewless COMMAND [ARGS...]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {summary}")
    lines.append("")
    lines.append("Run 'skewless COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from skewless import __version__

        print(f"skewless {__version__}")
        return 0
    name, rest = args[0], args[1:]
    entry = COMMANDS.get(name)
    if entry is None:
        print(f"skewless: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(entry[0])
    except ModuleNotFoundError as exc:
        if exc.name and entry[0].startswith(exc.name):
            print(f"skewless: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    result = module.main(rest)
    return int(result or 0)
