"""``skewless router``: run the HTTP router.

    skewless router --listen 127.0.0.1:8080 --routes routes.json --keys keys.txt
                    [--admin 127.0.0.1:8081] [--workers N]
    skewless router --listen 127.0.0.1:8080 --controller http://127.0.0.1:7000 --id r1 ...

With ``--workers N`` the parent binds the port (to learn it when given port 0), forks N
workers that each bind it again with SO_REUSEPORT and run their own event loop, and
forwards SIGHUP/SIGTERM/SIGINT to them. Each worker reloads on its own (SIGHUP, file
change, controller long-poll), so all see each reload. Worker 0 serves the admin listener.

SIGTERM/SIGINT drain: stop accepting, answer what is in flight (up to --drain-timeout),
close idle keep-alive connections, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

from skewless.core.errors import ConfigError
from skewless.core.pin import Keyring, PinCodec, SigningKey
from skewless.core.route_table import EMPTY_TABLE, RouteTable

log = logging.getLogger("skewless.router")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="skewless router", description="Run the HTTP router.")
    p.add_argument(
        "--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default %(default)s"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--routes", type=Path, metavar="FILE", help="route table (reloaded on SIGHUP and change)"
    )
    src.add_argument("--controller", metavar="URL", help="watch the controller's route table")
    p.add_argument("--keys", type=Path, metavar="FILE", help="pin keys, KEY_ID:SECRET a line")
    p.add_argument("--admin", metavar="HOST:PORT", help="/healthz, /metrics, /v1/state")
    p.add_argument("--token", help="admin and controller token (default $SKEWLESS_TOKEN)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes on the port")
    p.add_argument("--id", default=None, help="router id in reports (default: hostname)")
    p.add_argument("--cache", type=Path, metavar="FILE", help="last table (controller mode)")
    p.add_argument("--report-interval", type=float, default=5.0, metavar="S", help="default 5")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="then 408")
    p.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="S")
    p.add_argument("--upstream-timeout", type=float, default=60.0, metavar="S", help="then 504")
    p.add_argument("--connect-timeout", type=float, default=2.0, metavar="S")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--max-header-size", type=int, default=32 * 1024, metavar="B", help="then 431")
    p.add_argument("--watch-interval", type=float, default=1.0, metavar="S", help="file polling")
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark pin cookies Secure (clients reach the router through TLS)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


class UserError(Exception):
    pass


def _positive(value: float, flag: str) -> None:
    if not value > 0:
        raise UserError(f"{flag} must be > 0 (got {value})")


def validate(args: argparse.Namespace) -> None:
    if args.routes is None and args.controller is None:
        raise UserError("give --routes FILE or --controller URL")
    if args.workers < 1 or args.workers > 64:
        raise UserError(f"--workers must be between 1 and 64 (got {args.workers})")
    for flag in (
        "report_interval",
        "header_timeout",
        "keepalive_timeout",
        "upstream_timeout",
        "connect_timeout",
        "drain_timeout",
        "watch_interval",
    ):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.max_header_size < 1024:
        raise UserError("--max-header-size must be at least 1024")
    if args.controller and not args.controller.startswith(("http://", "https://")):
        raise UserError(
            f"--controller must be an http:// or https:// URL (got {args.controller!r})"
        )
    args.token = args.token or os.environ.get("SKEWLESS_TOKEN") or None
    if args.admin:
        from skewless.router.admin import is_loopback

        host, _ = address(args.admin, "--admin")
        if not is_loopback(host) and not args.token:
            raise UserError(
                f"--admin {args.admin} is not a loopback address: give --token (or "
                "SKEWLESS_TOKEN) so the admin listener is not open to anyone"
            )


def address(text: str, flag: str) -> tuple[str, int]:
    if ":" not in text:
        raise UserError(f"{flag} must be HOST:PORT (got {text!r})")
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise UserError(f"{flag} must be HOST:PORT with a port 0..65535 (got {text!r})")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind(host: str, port: int, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def ephemeral_keys() -> Keyring:
    return Keyring(keys=(SigningKey(key_id="ephemeral", secret=secrets.token_bytes(32)),))


def initial_state(args: argparse.Namespace) -> tuple[Keyring, RouteTable]:
    from skewless.router.sources import load_keys, load_routes

    try:
        keys = load_keys(args.keys) if args.keys else ephemeral_keys()
        table = load_routes(args.routes) if args.routes else EMPTY_TABLE
    except ConfigError as error:
        raise UserError(str(error)) from None
    if not args.keys:
        log.warning("no --keys: signing with a random key; pins will not survive a restart")
    return keys, table


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s skewless router[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        validate(args)
        keys, table = initial_state(args)
        host, port = address(args.listen, "--listen")
        try:
            placeholder = bind(host, port, reuseport=True)
        except OSError as error:
            raise UserError(f"--listen {args.listen}: cannot bind: {error.strerror}") from None
        port = placeholder.getsockname()[1]
        admin_sock = None
        if args.admin:
            ahost, aport = address(args.admin, "--admin")
            try:
                admin_sock = bind(ahost, aport, reuseport=False)
                admin_sock.listen(128)  # connections queue until the admin server runs
            except OSError as error:
                raise UserError(f"--admin {args.admin}: cannot bind: {error.strerror}") from None
    except UserError as error:
        print(f"skewless router: {error}", file=sys.stderr)
        return 2
    admin_text = ""
    if admin_sock is not None:
        ah, ap = admin_sock.getsockname()[:2]
        admin_text = f", admin http://{ah}:{ap}"
    print(
        f"skewless router: listening on http://{host}:{port}{admin_text}, "
        f"generation {table.generation}, {args.workers} worker(s)",
        file=sys.stderr,
        flush=True,
    )
    if args.workers == 1:
        sock = placeholder
        sock.listen(4096)
        return run_worker(args, 0, keys, table, sock, admin_sock)
    return supervise(args, keys, table, host, port, placeholder, admin_sock)


def supervise(
    args: argparse.Namespace,
    keys: Keyring,
    table: RouteTable,
    host: str,
    port: int,
    placeholder: socket.socket,
    admin_sock: socket.socket | None,
) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int, restart: bool = False) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                placeholder.close()
                sock = bind(host, port, reuseport=True)
                sock.listen(4096)
                mine = admin_sock if index == 0 else None
                if admin_sock is not None and index != 0:
                    admin_sock.close()
                current_keys, current_table = keys, table
                if restart:  # the files may have changed since the parent read them
                    try:
                        current_keys, current_table = initial_state(args)
                    except UserError as error:
                        log.error(
                            "worker %d: %s; using the configuration read at start", index, error
                        )
                code = run_worker(args, index, current_keys, current_table, sock, mine)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(args.workers):
        spawn(index)
    worst = 0
    deaths: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < 60] + [now]
            if len(deaths) > 5:
                log.error("workers keep dying (%d in a minute): stopping the router", len(deaths))
                stopping = True
                worst = 1
                forward(signal.SIGTERM, None)
                continue
            log.error("worker %d exited (%d); starting it again", index, code)
            time.sleep(0.5)
            spawn(index, restart=True)
        else:
            worst = max(worst, code if code > 0 else 0)
    placeholder.close()
    return worst


def run_worker(
    args: argparse.Namespace,
    index: int,
    keys: Keyring,
    table: RouteTable,
    sock: socket.socket,
    admin_sock: socket.socket | None,
) -> int:
    import uvloop

    from skewless.router.worker import Worker

    worker = Worker(args, index, PinCodec(keys), table, sock, admin_sock)
    return uvloop.run(worker.run())
