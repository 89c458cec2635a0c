"""``skewless hosts``: the hosts whose agents report to the controller."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from skewless.commands import render
from skewless.commands.client import Controller, add_target_arguments, run_command, target_from_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skewless hosts", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_target_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        with Controller(target_from_args(args)) as api:
            answer = api.get("/v1/hosts")
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        hosts = render.unwrap(answer, "hosts")
        if not hosts:
            Console().print("no hosts have reported yet")
        else:
            Console().print(render.hosts_table(hosts))
        return 0

    return run_command("hosts", body)
