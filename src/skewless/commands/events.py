"""``skewless events [APP] [--follow]``: the controller's event log, oldest first.

``--follow`` keeps long-polling for new events (Ctrl-C stops); it rides out a controller
restart, since the events are in its store.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from skewless.commands import render
from skewless.commands.client import Controller, add_target_arguments, run_command, target_from_args
from skewless.core.errors import UpstreamError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skewless events", description=__doc__.splitlines()[0])
    p.add_argument("app", metavar="APP", nargs="?")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    add_target_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    def show(events: list[Any]) -> Any:
        import json

        last = None
        for event in events:
            last = event.get("id", last)
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                print(render.event_line(event), flush=True)
        return last

    def body() -> int:
        with Controller(target_from_args(args)) as api:
            answer = api.get("/v1/events", params={"app": args.app, "wait": 0})
            after = show(render.unwrap(answer, "events"))
            failures = 0
            while args.follow:
                try:
                    answer = api.get(
                        "/v1/events",
                        params={"app": args.app, "after": after, "wait": 25},
                        timeout=35,
                    )
                    failures = 0
                except UpstreamError as exc:
                    failures += 1
                    if failures == 1:
                        print(f"skewless events: {exc}; retrying", file=sys.stderr)
                    time.sleep(min(5.0, 0.5 * failures))
                    continue
                after = show(render.unwrap(answer, "events")) or after
        return 0

    return run_command("events", body)
