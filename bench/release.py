"""The demo's scenario at a larger scale: releases in a row under session-flow load.

    python bench/release.py [--instances 8] [--hosts 4] [--users 300] [--releases 5]
                            [--think 2.0] [--idle-timeout 10] [--json]

A local fleet (``skewless up``, free ports, a temporary state dir), the sign-up wizard v1
on ``--instances`` instances, ``--users`` simulated users, then ``--releases`` releases
one after another, alternating rolling and side-by-side (v2 rolling, v3 side-by-side,
...). For each release it prints the demo's table (requests, failed requests, sessions,
mixed sessions, retirement, duration, capacity floor, extra hosts/processes/memory) and
the ratio of the release's duration to its least possible duration: per batch, the
slowest bring-up (start, health, smoke) plus the slowest drain, batches in sequence.
The fleet is stopped at the end. Timings are this machine's; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from skewless.demo.story import DemoError, Story, StoryOptions, check_idle_timeout, render


def _free() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--releases", type=int, default=5)
    p.add_argument("--think", type=float, default=2.0, help="mean think time per page (s)")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="session idle timeout (s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    try:
        check_idle_timeout(args.idle_timeout, args.think)
    except DemoError as exc:
        p.error(str(exc))
    strategies = ("rolling", "side-by-side")
    releases = tuple((f"v{n + 2}", strategies[n % 2]) for n in range(args.releases))
    slots = max(4, -(-2 * args.instances // args.hosts))  # side-by-side doubles instances
    opts = StoryOptions(
        hosts=args.hosts,
        slots=slots,
        instances=args.instances,
        users=args.users,
        think=args.think,
        idle_timeout=args.idle_timeout,
        warmup=max(3.0, 2 * args.think),
        http=_free(),
        api=_free(),
        state=Path(tempfile.mkdtemp(prefix="skewless-bench-")),
        releases=releases,
    )
    err = Console(stderr=True)
    story = Story(opts, lambda line: err.print(line, markup=False), lambda _: None)

    async def body() -> object:
        try:
            return await story.run()
        finally:
            if story.api is not None:
                await story.api.close()

    try:
        result = asyncio.run(body())
    except DemoError as exc:
        print(f"bench/release.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if story.up is not None:
            story.up.stop()
    assert hasattr(result, "releases")
    if args.json:
        print(json.dumps(result.to_json()))
        return 0 if result.ok else 1
    render(result)
    table = Table(
        title=f"{len(releases)} releases, {args.instances} instances on {args.hosts} hosts, "
        f"{args.users} users"
    )
    cols = (
        "release",
        "strategy",
        "requests",
        "failed",
        "mixed",
        "duration",
        "least",
        "ratio",
        "old retired",
        "why",
        "idle before",
        "ready/floor",
        "+procs",
        "+MB",
    )
    for col in cols:
        table.add_column(col, justify="right")

    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    for r in result.releases:
        j = r.to_json()
        ratio = j["duration_over_floor"]
        table.add_row(
            f"{j['old_version']}->{j['version']}",
            j["strategy"],
            str(j["requests"]),
            str(j["failed_requests"]),
            str(j["mixed_sessions"]),
            sec(j["duration"]),
            sec(j["duration_floor"]),
            "-" if ratio is None else f"{ratio:.1f}x",
            sec(j["old_retired_after"]),
            j["retire_reason"] or "-",
            sec(j["old_idle_before_retire"]),
            f"{j['min_ready_instances']}/{j['floor']}",
            str(j["peak_extra_processes"]),
            f"{j['peak_extra_memory_mb']:.0f}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
