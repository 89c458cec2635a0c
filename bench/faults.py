"""Faults at full scale: the wire between router and instances, and kill -9 of the parts
during rolling releases, under simulated multi-page users. Prints one table.

    PYTHONPATH=src python bench/faults.py [--users 20] [--seeds 3] [--hosts 2]
        [--instances 4] [--wire-seconds 4] [--only wire|process]
        [--strategies rolling,side-by-side,surge] [--json] [--markdown]

Wire scenarios (one per fault-proxy mode): ``skewless router`` (a real process) in front
of two instances of the tiny e2e app (real processes), each behind a fault proxy; the
users run sessions for a while, the fault is switched on for one instance for
``--wire-seconds``, then off. Process scenarios: ``skewless up`` with ``--hosts`` agents,
v1 on ``--instances`` instances, then a release to v2 (each of ``--strategies``, rolling
by default, batch 1) while a seeded schedule kills an instance, an agent and the
controller (kill -9) at random moments.

Failed requests are split: *unsaveable* ones are those the router may not resend (a 502,
504 or cut answer from the faulty instance on the wire; a request cut by its instance's
kill -9 in the process scenarios); *saveable* ones are everything else, and should be 0.
Timings are this machine's (shared, 2 cores): read the counts, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchtools
import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.e2e_faults import (  # noqa: E402
    FaultRunner,
    Watch,
    admin_url,
    classify,
    duplicate_actions,
    rollout_end,
    schedule,
)
from tests.e2e.e2e_fleet import TINYAPP, Fleet, free_port, wait_for  # noqa: E402
from tests.e2e.e2e_sessions import SessionLoad  # noqa: E402

from skewless.testing.faultproxy import ThreadedFaultProxy  # noqa: E402

WIRE_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("latency", {"latency_ms": 50, "connect_ms": 50}),
    ("latency", {"latency_ms": 3000}),
    ("reset", {}),
    ("reset", {"after": 40}),
    ("blackhole", {}),
    ("slow_close", {"close_ms": 3000}),
    ("byte_limit", {"after": 60}),
    ("refuse", {}),
]


@dataclass
class Row:
    scenario: str
    users: int
    rps: float
    faults: str
    requests: int
    saveable: int
    unsaveable: int
    mixed: int
    outcome: str
    seconds: float


# ---- wire faults ---------------------------------------------------------------------------


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_wire(mode: str, params: dict[str, Any], args: argparse.Namespace, tmp: Path) -> Row:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SKEWLESS_HOME": str(tmp / "home")}
    env.pop("SKEWLESS_TOKEN", None)
    procs: list[subprocess.Popen[bytes]] = []
    proxies: list[ThreadedFaultProxy] = []
    try:
        ports = [free_port(), free_port()]
        for port in ports:
            cmd = [sys.executable, TINYAPP, "--port", str(port), "--version", "v1"]
            procs.append(_spawn([*cmd, "--mark", str(tmp)], env))
        for port in ports:
            wait_for("an instance", lambda p=port: httpx.get(f"http://127.0.0.1:{p}/healthz"), 20)
            proxies.append(ThreadedFaultProxy(f"127.0.0.1:{port}"))
        routes = {
            "generation": 1,
            "apps": [{
                "name": "shop", "hosts": ["*"],
                "session": {"cookie": "skewless-shop", "idle_timeout": 30},
                "versions": [{
                    "version": "v1", "state": "live", "weight": 1.0,
                    "health": {"path": "/healthz", "interval": 0.5, "timeout": 0.5},
                    "instances": [
                        {"id": f"h{k}/shop/v1/0", "address": p.address, "state": "ready"}
                        for k, p in enumerate(proxies)
                    ],
                }],
            }],
        }  # fmt: skip
        (tmp / "routes.json").write_text(json.dumps(routes))
        listen = free_port()
        router = [
            sys.executable, "-m", "skewless", "router", "--listen", f"127.0.0.1:{listen}",
            "--routes", str(tmp / "routes.json"), "--upstream-timeout", "1",
            "--connect-timeout", "1",
        ]  # fmt: skip
        procs.append(_spawn(router, env))
        url = f"http://127.0.0.1:{listen}"
        wait_for("the router", lambda: httpx.get(f"{url}/healthz").status_code == 200, 20)
        started = time.monotonic()
        with SessionLoad(url, users=args.users, requests_per_session=6, think=0.1) as load:
            wait_for("load", lambda: load.requests() > args.users, 30)
            on = time.time()
            proxies[0].set(mode, **params)  # type: ignore[arg-type]
            time.sleep(args.wire_seconds)  # the fault's window (a bench, not a test)
            proxies[0].set("pass")
            off = time.time()
            time.sleep(2)
            load.stop()
        seconds = time.monotonic() - started
        saveable, unsaveable = 0, 0
        for s in load.snapshot():
            for a in s.answers:
                if a.status == 200:
                    continue
                # The router may not resend what left it: 502/504/cut from the faulty
                # instance while the fault was on (a little after, for its timeouts).
                in_window = on - 0.5 <= a.sent <= off + 2.0
                if in_window and a.status in (None, 502, 504):
                    unsaveable += 1
                else:
                    saveable += 1
        label = ", ".join(f"{k}={v}" for k, v in params.items())
        return Row(
            scenario=f"wire: {mode}" + (f" ({label})" if label else ""),
            users=args.users,
            rps=round(load.requests() / seconds, 1),
            faults=f"1 of 2 instances, {args.wire_seconds:g} s",
            requests=load.requests(),
            saveable=saveable,
            unsaveable=unsaveable,
            mixed=len(load.mixed()),
            outcome="-",
            seconds=round(seconds, 1),
        )
    finally:
        for p in proxies:
            p.close()
        for proc in procs:
            benchtools.stop_group(proc)


# ---- process faults ------------------------------------------------------------------------


def run_process(seed: int, strategy: str, args: argparse.Namespace, tmp: Path) -> Row:
    per_host = -(-args.instances // args.hosts)
    # Rolling: one spare slot per host; side-by-side and surge: room for both versions.
    slots = per_host + 1 if strategy == "rolling" else 2 * per_host
    fleet = Fleet(tmp, hosts=args.hosts, slots=slots)
    common = ["--instances", str(args.instances), "--session-idle-timeout", "2"]
    try:
        fleet.start()
        first = fleet.deploy("shop", "v1", *common)
        if first.returncode != 0:
            raise RuntimeError(f"v1 deploy failed: {first.stdout}{first.stderr}")
        faults = schedule(seed, window=args.window)
        started = time.monotonic()
        with SessionLoad(fleet.http, users=args.users, requests_per_session=6, think=0.1) as load:
            wait_for("sessions", lambda: load.requests() > args.users, 30)
            runner = FaultRunner(fleet, faults)
            with Watch(admin=admin_url(fleet), fleet=fleet, load=load, desired=args.instances) as w:
                done = fleet.deploy(
                    "shop", "v2", *common, "--strategy", strategy, "--batch", "1", wait=False
                )
                if done.returncode != 0:
                    raise RuntimeError(f"v2 deploy refused: {done.stdout}{done.stderr}")
                runner.start()
                try:
                    end = wait_for(
                        "the release to end",
                        lambda: runner.done() and rollout_end(fleet, "shop", "v2"),
                        timeout=args.deadline,
                        every=0.5,
                    )
                except AssertionError:
                    end = {"state": "STUCK", "reason": f"no end within {args.deadline:g} s"}
                runner.stop()
                load.stop()
        seconds = time.monotonic() - started
        failed = classify(load, runner.kills)
        actions, dups = duplicate_actions(fleet.api, "shop")
        outcome = str(end.get("state"))
        if outcome != "succeeded":
            outcome += f": {end.get('reason')}"
        notes = []
        if dups:
            notes.append(f"{len(dups)} duplicate actions")
        if w.too_many:
            notes.append(f"too many processes ({w.too_many[0]})")
        if w.floor_breaks:
            notes.append(f"{len(w.floor_breaks)} floor breaks")
        if load.problems:
            notes.append(f"{len(load.problems)} router/app version disagreements")
        kinds = ", ".join(f"{k.fault.kind}@{k.fault.at:g}s" for k in runner.kills)
        return Row(
            scenario=f"{strategy}, kill -9 (seed {seed})",
            users=args.users,
            rps=round(load.requests() / seconds, 1),
            faults=kinds + (f"; {actions} actions" if not notes else "; " + "; ".join(notes)),
            requests=load.requests(),
            saveable=len(failed.saveable),
            unsaveable=len(failed.unsaveable),
            mixed=len(load.mixed()),
            outcome=outcome,
            seconds=round(seconds, 1),
        )
    finally:
        fleet.stop()
        fleet.kill_everything()


def render(rows: list[Row]) -> Table:
    table = Table(title="skewless under faults")
    for col in ("scenario", "users", "req/s", "faults injected", "requests", "failed",
                "mixed", "outcome", "s"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.scenario, str(r.users), f"{r.rps:g}", r.faults, str(r.requests),
            f"{r.saveable} saveable / {r.unsaveable} not", str(r.mixed), r.outcome,
            f"{r.seconds:g}",
        )  # fmt: skip
    return table


def markdown(rows: list[Row]) -> str:
    out = [
        "| scenario | users | req/s | faults injected | requests | failed (saveable / not) "
        "| mixed sessions | outcome | duration |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.scenario} | {r.users} | {r.rps:g} | {r.faults} | {r.requests} "
            f"| {r.saveable} / {r.unsaveable} | {r.mixed} | {r.outcome} | {r.seconds:g} s |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3, help="process-fault schedules (1..N)")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--window", type=float, default=6.0, help="faults land within S seconds")
    p.add_argument("--deadline", type=float, default=180.0)
    p.add_argument("--wire-seconds", type=float, default=4.0)
    p.add_argument("--only", choices=("wire", "process"))
    p.add_argument(
        "--strategies",
        default="rolling",
        help="comma-separated: rolling, side-by-side, surge (process scenarios)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    args = p.parse_args()
    for flag, value in (("--users", args.users), ("--seeds", args.seeds),
                        ("--hosts", args.hosts), ("--instances", args.instances)):  # fmt: skip
        if value < 1:
            p.error(f"{flag} must be at least 1 (got {value})")
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    for x in strategies:
        if x not in ("rolling", "side-by-side", "surge"):
            p.error(f"--strategies: {x!r} is not one of rolling, side-by-side, surge")
    console = Console(stderr=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="skewless-faults-") as tmp:
        if args.only != "process":
            for n, (mode, params) in enumerate(WIRE_FAULTS):
                console.print(f"wire: {mode} {params}")
                d = Path(tmp) / f"wire{n}"
                d.mkdir()
                rows.append(run_wire(mode, params, args, d))
        if args.only != "wire":
            for strategy in strategies:
                for seed in range(1, args.seeds + 1):
                    console.print(f"process faults, {strategy}, seed {seed}")
                    d = Path(tmp) / f"{strategy}-seed{seed}"
                    d.mkdir()
                    rows.append(run_process(seed, strategy, args, d))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        Console(width=220).print(render(rows))
    if args.markdown:
        print(markdown(rows))
    bad = [r for r in rows if r.saveable or r.mixed or r.outcome.startswith("STUCK")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
