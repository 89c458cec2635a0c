"""``skewless status [APP] [--json]``: apps, versions, instances and the rollout.

With APP and ``--json`` it prints the controller's ``GET /v1/apps/APP`` answer as is:
the shape of issue 4 (``{"app", "versions": [...], "rollout": {...}}``), for scripts.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from skewless.commands import render
from skewless.commands.client import Controller, add_target_arguments, run_command, target_from_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skewless status", description=__doc__.splitlines()[0])
    p.add_argument("app", metavar="APP", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_target_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        with Controller(target_from_args(args)) as api:
            answer = api.get(f"/v1/apps/{args.app}" if args.app else "/v1/apps")
        if args.json:
            print(json.dumps(answer, indent=2, sort_keys=False))
            return 0
        console = Console()
        if args.app:
            console.print(render.app_status(answer))
        else:
            apps = render.unwrap(answer, "apps")
            if not apps:
                console.print("no apps yet: release one with `skewless deploy APP VERSION ...`")
            else:
                console.print(render.apps_table(apps))
        return 0

    return run_command("status", body)
