"""``skewless releases APP``: an app's releases, oldest first."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from skewless.commands import render
from skewless.commands.client import Controller, add_target_arguments, run_command, target_from_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skewless releases", description=__doc__.splitlines()[0])
    p.add_argument("app", metavar="APP")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_target_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        with Controller(target_from_args(args)) as api:
            answer = api.get(f"/v1/apps/{args.app}/releases")
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        releases = render.unwrap(answer, "releases")
        if not releases:
            Console().print(f"{args.app} has no releases")
        else:
            Console().print(render.releases_table(releases))
        return 0

    return run_command("releases", body)
