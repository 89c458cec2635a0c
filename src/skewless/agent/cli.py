"""``skewless agent``: run a host agent.

    skewless agent --listen 127.0.0.1:7070 --state-dir DIR --desired desired.json
                   [--slots N] [--ports 20000-29999]
    skewless agent --listen 127.0.0.1:7070 --state-dir DIR --controller URL --host-id ID
                   [--token T]

SIGHUP re-reads the desired file. SIGTERM/SIGINT stop the agent and leave its instances
running (a new agent re-adopts them), unless ``--stop-instances-on-exit`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from skewless.agent.api import build_app
from skewless.agent.instance import AgentOptions
from skewless.agent.sources import ControllerSource, FileSource, load_last_good
from skewless.agent.state_dir import StateDir
from skewless.agent.supervisor import Supervisor
from skewless.core.backoff import BackoffPolicy
from skewless.core.errors import ConfigError, SkewlessError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent decides what a signal means."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless agent",
        description="Run a host agent: supervise app instances, several versions side by side.",
    )
    p.add_argument("--listen", default="127.0.0.1:7070", help="HOST:PORT of the status API")
    p.add_argument("--state-dir", required=True, type=Path, help="records, logs, releases")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--desired", type=Path, help="desired-state JSON file (reloaded on change)")
    src.add_argument("--controller", help="controller URL to long-poll for the desired state")
    p.add_argument("--host-id", help="this host's id (required with --controller)")
    p.add_argument("--token", help="API token (default: env SKEWLESS_TOKEN)")
    p.add_argument("--slots", type=int, default=4, help="instances this host may run (4)")
    p.add_argument("--ports", default="20000-29999", help="port range for instances")
    p.add_argument("--advertise", default="127.0.0.1", help="host part of instance addresses")
    p.add_argument(
        "--stop-instances-on-exit",
        action="store_true",
        help="stop all instances when the agent exits (default: leave them running)",
    )
    p.add_argument("--keep-releases", type=int, default=3, help="unpacked releases kept per app")
    p.add_argument("--report-interval", type=float, default=2.0, help="seconds between reports")
    p.add_argument("--backoff-base", type=float, default=0.5, help="first restart delay (s)")
    p.add_argument("--backoff-cap", type=float, default=30.0, help="longest restart delay (s)")
    p.add_argument(
        "--crash-loop",
        default="5/120",
        help="N/SECONDS: more than N crashes within SECONDS is a crash loop (5/120)",
    )
    return p


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen must be HOST:PORT, e.g. 127.0.0.1:7070 (got {text!r})")
    return host.strip("[]"), int(port)


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi) <= 65535:
        raise ConfigError(
            f"--ports must be LOW-HIGH within 1-65535, e.g. 20000-29999 (got {text!r})"
        )
    return int(lo), int(hi)


def _crash_loop(text: str) -> tuple[int, float]:
    n, sep, window = text.partition("/")
    try:
        count, seconds = int(n), float(window)
    except ValueError:
        count, seconds = -1, -1.0
    if not sep or count < 0 or seconds <= 0:
        raise ConfigError(f"--crash-loop must be N/SECONDS, e.g. 5/120 (got {text!r})")
    return count, seconds


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        host, port = _host_port(args.listen)
        ports = _port_range(args.ports)
        max_restarts, window = _crash_loop(args.crash_loop)
        if args.slots < 0:
            raise ConfigError("--slots must be >= 0")
        if args.controller and not args.host_id:
            raise ConfigError("--host-id is required with --controller")
        token = args.token or os.environ.get("SKEWLESS_TOKEN") or None
        if not _is_loopback(host) and not token:
            raise ConfigError(
                f"--listen {args.listen} is not a loopback address: give a --token "
                "(or SKEWLESS_TOKEN) so that strangers cannot drive this agent"
            )
        try:
            backoff = BackoffPolicy(
                base=args.backoff_base,
                cap=args.backoff_cap,
                window=window,
                max_restarts=max_restarts,
            )
        except ValueError as exc:
            raise ConfigError(f"--backoff-base/--backoff-cap: {exc}") from None
        options = AgentOptions(
            host_id=args.host_id or socket.gethostname(),
            slots=args.slots,
            ports=ports,
            advertise=args.advertise,
            backoff=backoff,
            keep_releases=max(1, args.keep_releases),
        )
        try:
            listener = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
        return asyncio.run(_run(args, options, token, listener))
    except SkewlessError as exc:
        print(f"skewless agent: {exc}", file=sys.stderr)
        return 2


async def _run(
    args: argparse.Namespace, options: AgentOptions, token: str | None, listener: socket.socket
) -> int:
    state_dir = StateDir(args.state_dir)
    sup = Supervisor(state_dir, options)
    sup.adopt()
    load_last_good(sup)
    source: FileSource | ControllerSource
    if args.desired is not None:
        source = FileSource(args.desired.resolve(), sup)
        source.load()
    else:
        source = ControllerSource(
            args.controller,
            options.host_id,
            sup,
            token=token,
            report_interval=args.report_interval,
        )
    address = listener.getsockname()
    listen = f"{address[0]}:{address[1]}"

    def extra() -> dict[str, Any]:
        out: dict[str, Any] = {"listen": listen}
        if isinstance(source, ControllerSource):
            out["controller"] = source.base
            out["controller_error"] = source.error
        else:
            out["desired_file"] = str(source.path)
        return out

    app = build_app(sup, token=token, reload=source.reload, extra_status=extra)
    server = _Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, source.reload)

    supervising = asyncio.create_task(sup.run())
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    sourcing = asyncio.create_task(source.run())
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        supervising.cancel()
        sourcing.cancel()
        await asyncio.gather(supervising, sourcing, return_exceptions=True)
        raise ConfigError(f"cannot serve on {listen}")
    state_dir.save_agent({"pid": os.getpid(), "listen": listen, "host_id": options.host_id})
    print(
        f"skewless agent {options.host_id}: listening on http://{listen}, "
        f"state in {state_dir.root}, {options.slots} slots",
        file=sys.stderr,
        flush=True,
    )
    watched = (supervising, serving, sourcing)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait((*watched, stopper), return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    server.should_exit = True
    sourcing.cancel()
    supervising.cancel()
    await asyncio.gather(supervising, sourcing, return_exceptions=True)
    if args.stop_instances_on_exit:
        await sup.stop_all()
    await asyncio.gather(serving, return_exceptions=True)
    for task in watched:
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(f"skewless agent: crashed: {task.exception()!r}", file=sys.stderr)
            return 1
    return 0
