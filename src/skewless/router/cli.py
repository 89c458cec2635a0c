"""``skewless router``: run the HTTP router.

    skewless router --listen 127.0.0.1:8080 --routes routes.json --keys keys.txt
                    [--admin 127.0.0.1:8081] [--workers N]
    skewless router --listen 127.0.0.1:8080 --controller http://127.0.0.1:7000 --id r1 ...

With ``--workers N`` the parent binds N listening sockets on the port with SO_REUSEPORT
(the first one learns the port when given port 0), forks N workers that each serve
their own socket with their own event loop, and forwards SIGHUP/SIGTERM/SIGINT to them.
The parent keeps the sockets: a restarted worker serves the same one (connections
queued on it wait instead of being reset), and a hitless upgrade hands them all over.
Each worker reloads on its own (SIGHUP, file change, controller long-poll), so all see
each reload. Worker 0 serves the admin listener.

SIGTERM/SIGINT drain: stop accepting, answer what is in flight (up to --drain-timeout),
close idle keep-alive connections, WebSockets get 1001 at the deadline, exit 0.

Hitless upgrade (``skewless.router.upgrade``): the router listens on
``--upgrade-socket`` (default ``$SKEWLESS_HOME/router-PORT.sock``); ``skewless router
SAME-FLAGS --takeover PATH`` receives its listening sockets and state, serves, and the
old router drains and exits 0. ``kill -USR2 PID`` starts that new process for you.
With ``--workers N`` the supervisor does it: it holds the sockets and asks each worker
for its state; worker K of the new router gets the state of the old worker K.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from skewless.core.errors import ConfigError
from skewless.core.pin import Keyring, PinCodec, SigningKey
from skewless.core.route_table import EMPTY_TABLE, RouteTable
from skewless.router.limits import limit_unsent
from skewless.router.upgrade import Handover, UpgradeError, UpgradeListener, take_over

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
    p.add_argument(
        "--body-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="a request body must send --body-min-rate x S bytes every S seconds, else 408",
    )
    p.add_argument("--body-min-rate", type=float, default=500.0, metavar="B/S", help="default 500")
    p.add_argument(
        "--send-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close a client that reads nothing of its response for S seconds",
    )
    p.add_argument(
        "--send-buffer-limit",
        type=int,
        default=64 * 1024 * 1024,
        metavar="B",
        help="bytes buffered for clients not reading, per worker; beyond: cut the slowest",
    )
    p.add_argument(
        "--send-lowat",
        type=int,
        default=64 * 1024,
        metavar="B",
        help="unsent bytes the kernel queues per client connection (TCP_NOTSENT_LOWAT; "
        "0 = kernel default, megabytes)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="client connections per worker (capped by RLIMIT_NOFILE); beyond: 503",
    )
    p.add_argument("--max-header-size", type=int, default=32 * 1024, metavar="B", help="then 431")
    p.add_argument("--watch-interval", type=float, default=1.0, metavar="S", help="file polling")
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark pin cookies Secure (clients reach the router through TLS)",
    )
    p.add_argument(
        "--upgrade-socket",
        metavar="PATH",
        help="unix socket a new router takes over from (default $SKEWLESS_HOME/router-PORT"
        ".sock; 'off' disables)",
    )
    p.add_argument(
        "--takeover",
        metavar="PATH",
        help="take the listening sockets and state over from the router at PATH",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    args.argv = list(argv)
    return args


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
        "body_timeout",
        "send_timeout",
    ):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.body_min_rate < 0:
        raise UserError(f"--body-min-rate must be >= 0 (got {args.body_min_rate})")
    if args.send_buffer_limit < 1024 * 1024:
        raise UserError(
            f"--send-buffer-limit must be at least 1048576 (got {args.send_buffer_limit})"
        )
    if args.send_lowat != 0 and not 4096 <= args.send_lowat <= 64 * 1024 * 1024:
        raise UserError(
            f"--send-lowat must be 0 (kernel default) or 4096..67108864 bytes "
            f"(got {args.send_lowat})"
        )
    if args.max_connections < 1:
        raise UserError(f"--max-connections must be >= 1 (got {args.max_connections})")
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


def fd_budget(args: argparse.Namespace) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (workers inherit it) and cap
    --max-connections to what it allows, so accept() never runs out of descriptors."""
    from skewless.router.limits import connection_budget, raise_nofile

    nofile = raise_nofile()
    allowed = connection_budget(args.max_connections, nofile)
    if allowed < args.max_connections:
        log.warning(
            "--max-connections %d capped to %d per worker by RLIMIT_NOFILE %d "
            "(two descriptors per client connection plus a reserve)",
            args.max_connections,
            allowed,
            nofile,
        )
        args.max_connections = allowed


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
    handover: Handover | None = None
    try:
        validate(args)
        keys, table = initial_state(args)
        fd_budget(args)
        host, port = address(args.listen, "--listen")
        if args.takeover:
            try:
                handover = take_over(args.takeover)
            except UpgradeError as error:
                raise UserError(str(error)) from None
            socks = handover.listen
            if not args.keys:
                from skewless.router.handover import keys_of

                keys = keys_of(handover.state) or keys
            if not socks:
                raise UserError(f"--takeover {args.takeover}: no listening socket received")
            host, port = socks[0].getsockname()[:2]
            try:  # more workers than the old router had: a socket for each
                while len(socks) < args.workers:
                    socks.append(bind(host, port, reuseport=True))
                    limit_unsent(socks[-1], args.send_lowat)
                    socks[-1].listen(4096)
            except OSError as error:
                raise UserError(
                    f"--workers: cannot bind another socket: {error.strerror}"
                ) from None
        else:
            socks = []
            try:
                for _ in range(args.workers):
                    socks.append(bind(host, port, reuseport=True))
                    port = socks[0].getsockname()[1]
            except OSError as error:
                raise UserError(f"--listen {args.listen}: cannot bind: {error.strerror}") from None
            for sock in socks:
                # before listen(): connections the kernel completes before the worker
                # runs are cloned from the listener as it is then
                limit_unsent(sock, args.send_lowat)
                sock.listen(4096)
        upgrade_path = upgrade_socket_path(args, port)
        admin_sock = handover.admin if handover is not None else None
        if args.admin and admin_sock is None:
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
        f"generation {table.generation}, {args.workers} worker(s)"
        + (f", taken over from {args.takeover}" if handover is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    if args.workers == 1:
        return run_worker(args, 0, keys, table, socks, admin_sock, handover, upgrade_path)
    # Each worker publishes its metrics here every second; worker 0's /metrics merges
    # them (the workers share no memory). Removed when the supervisor ends.
    args.metrics_dir = tempfile.mkdtemp(prefix="skewless-router-metrics-")
    try:
        return supervise(args, keys, table, socks, admin_sock, handover, upgrade_path)
    finally:
        shutil.rmtree(args.metrics_dir, ignore_errors=True)


def upgrade_socket_path(args: argparse.Namespace, port: int) -> str | None:
    from skewless.router.sources import default_state_dir
    from skewless.router.upgrade import default_path

    explicit = args.upgrade_socket
    if explicit == "off":
        return None
    path = explicit or default_path(default_state_dir(), port)
    if len(os.fsencode(path)) > 107:
        if explicit:
            raise UserError(f"--upgrade-socket {path}: longer than a unix socket path may be")
        log.warning("upgrade socket path %s is too long: give --upgrade-socket PATH", path)
        return None
    return path


def supervise(
    args: argparse.Namespace,
    keys: Keyring,
    table: RouteTable,
    socks: list[socket.socket],
    admin_sock: socket.socket | None,
    handover: Handover | None,
    upgrade_path: str | None,
) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    asks: dict[int, socket.socket] = {}  # worker index -> where to ask for its state
    states: list[dict[str, object]] = list(handover.state.get("workers", [])) if handover else []
    ready_r, ready_w = os.pipe()
    stopping = False
    n = args.workers

    def spawn(index: int, restart: bool = False) -> None:
        ask, answer = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGUSR2, signal.SIG_DFL)
                if not restart:
                    os.close(ready_r)
                ask.close()
                for other in asks.values():
                    other.close()
                mine = [s for j, s in enumerate(socks) if j % n == index]
                for j, s in enumerate(socks):
                    if j % n != index:
                        s.close()
                admin = admin_sock if index == 0 else None
                if admin_sock is not None and index != 0:
                    admin_sock.close()
                current_keys, current_table = keys, table
                state = None
                if restart:  # the files may have changed since the parent read them
                    try:
                        current_keys, current_table = initial_state(args)
                    except UserError as error:
                        log.error(
                            "worker %d: %s; using the configuration read at start", index, error
                        )
                elif index < len(states):
                    state = states[index]
                elif states:  # more workers than before: the table and health, no counters
                    state = {k: v for k, v in states[0].items() if k != "stats"}
                answer.setblocking(False)
                code = run_worker(
                    args,
                    index,
                    current_keys,
                    current_table,
                    mine,
                    admin,
                    state=state,
                    state_sock=answer,
                    ready_fd=None if restart else ready_w,
                )
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                os._exit(code)
        answer.close()
        old = asks.pop(index, None)
        if old is not None:
            old.close()
        asks[index] = ask
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def provide() -> tuple[list[socket.socket], socket.socket | None, dict[str, object]]:
        gathered = []
        for index in sorted(asks):
            ask = asks[index]
            ask.settimeout(10)
            ask.sendall(b"state\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = ask.recv(1 << 20)
                if not chunk:
                    raise UpgradeError(f"worker {index} did not give its state")
                buf += chunk
            gathered.append(json.loads(buf))
        return socks, admin_sock, {"workers": gathered}

    def handed_over() -> None:
        forward(signal.SIGTERM, None)

    def on_usr2(_signum: int, _frame: object) -> None:
        from skewless.router.upgrade import spawn_successor

        if listener is None or listener.done:
            log.error("SIGUSR2 ignored: no upgrade socket, or already handed over")
        else:
            spawn_successor(args.argv, listener.path)

    listener: UpgradeListener | None = None
    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR2, on_usr2)
    for index in range(n):
        spawn(index)
    os.close(ready_w)
    if handover is not None:
        ready = 0
        while ready < n:  # every worker serves before the old router stops accepting
            got = os.read(ready_r, n)
            if not got:
                break
            ready += len(got)
        from skewless.router.upgrade import confirm_ready

        try:
            confirm_ready(handover)
        except (OSError, UpgradeError) as error:
            log.error("upgrade: the old router did not let go: %s", error)
    os.close(ready_r)
    if upgrade_path:
        listener = UpgradeListener(upgrade_path, provide, handed_over)
        try:
            listener.bind()
            listener.start()
            log.info("upgrade socket %s (a new router takes over with --takeover)", upgrade_path)
        except UpgradeError as error:
            log.error("%s; hitless upgrade is off for this process", error)
            listener = None
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
    if listener is not None:
        listener.close(unlink=not listener.done)
    for sock in socks:
        sock.close()
    return worst


def run_worker(
    args: argparse.Namespace,
    index: int,
    keys: Keyring,
    table: RouteTable,
    socks: list[socket.socket],
    admin_sock: socket.socket | None,
    handover: Handover | None = None,
    upgrade_path: str | None = None,
    *,
    state: dict[str, object] | None = None,
    state_sock: socket.socket | None = None,
    ready_fd: int | None = None,
) -> int:
    """One worker; alone (``handover``/``upgrade_path``: it is the upgrade end itself)
    or under a supervisor (``state_sock``, ``ready_fd``: the supervisor is)."""
    import uvloop

    from skewless.router.worker import Worker

    if handover is not None:
        workers = handover.state.get("workers") or [None]
        state = workers[0]
    worker = Worker(args, index, PinCodec(keys), table, socks, admin_sock, state)
    worker.handover = handover
    worker.upgrade_path = upgrade_path
    worker.state_sock = state_sock
    if ready_fd is not None:

        def serving() -> None:
            with contextlib.suppress(OSError):  # nobody waits for it (no takeover)
                os.write(ready_fd, b"r")
            os.close(ready_fd)

        worker.on_serving = serving
    return uvloop.run(worker.run())
