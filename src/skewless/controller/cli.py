"""``skewless controller --listen 127.0.0.1:7000 [--store URL] [--token T] [--state-dir DIR]``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must look like 127.0.0.1:7000 (got {value!r})")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_state_dir() -> Path:
    home = os.environ.get("SKEWLESS_HOME")
    return (Path(home) if home else Path.home() / ".skewless") / "controller"


def _lock_store(path: str) -> IO[bytes] | None:
    """An exclusive lock beside the store: the SQLite store has one writer. The kernel
    drops the lock when the process dies, kill -9 included."""
    import fcntl

    if path == ":memory:":
        return open(os.devnull, "rb")
    handle = open(path + ".lock", "ab")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def ensure_token(state_dir: Path) -> tuple[str, Path]:
    """The token a controller started without one uses: made once, kept in
    ``STATE_DIR/token`` (mode 0600), so that no mutating call is ever open to anyone
    who can reach the port (another local user, a web page posting to 127.0.0.1)."""
    import secrets

    path = state_dir / "token"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text:
        state_dir.mkdir(parents=True, exist_ok=True)
        text = secrets.token_urlsafe(32)
        tmp = path.with_name("token.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return text, path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="skewless controller", description="Run the controller.")
    p.add_argument(
        "--listen",
        default="127.0.0.1:7000",
        help="HOST:PORT (default 127.0.0.1:7000; port 0 = any)",
    )
    p.add_argument(
        "--store", default=None, help="sqlite:///PATH (default: STATE_DIR/controller.db)"
    )
    p.add_argument(
        "--token",
        default=None,
        help="API token (default: env SKEWLESS_TOKEN, else one made and kept in STATE_DIR/token)",
    )
    p.add_argument(
        "--state-dir", default=None, help="state directory (default ~/.skewless/controller)"
    )
    p.add_argument("--tick", type=float, default=0.5, help="engine tick in seconds (default 0.5)")
    p.add_argument(
        "--events-kept",
        type=int,
        default=100_000,
        metavar="N",
        help="events kept in the store, all apps together; older ones are pruned (default 100000)",
    )
    p.add_argument(
        "--planner",
        default=None,
        metavar="MODULE:FUNC",
        help="use another plan(snapshot) function (tests, experiments); default skewless.core.planner:plan",
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)

    token = args.token or os.environ.get("SKEWLESS_TOKEN") or None
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"skewless controller: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(host) and not token:
        print(
            f"skewless controller: refusing to listen on {host} without a token: "
            "pass --token or set SKEWLESS_TOKEN (or listen on 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    if not args.tick > 0:
        print("skewless controller: --tick must be greater than 0", file=sys.stderr)
        return 2
    planner = None
    if args.planner:
        import importlib

        module, _, func = args.planner.partition(":")
        try:
            planner = getattr(importlib.import_module(module), func or "plan")
        except (ImportError, AttributeError) as exc:
            print(f"skewless controller: --planner {args.planner}: {exc}", file=sys.stderr)
            return 2
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    store_url = args.store or f"sqlite:///{state_dir / 'controller.db'}"

    import sqlite3

    from skewless.controller.store_sqlite import open_store

    if args.events_kept < 1:
        print(
            f"skewless controller: --events-kept must be at least 1 (got {args.events_kept})",
            file=sys.stderr,
        )
        return 2
    try:
        store = open_store(store_url, events_kept=args.events_kept)
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"skewless controller: {exc}", file=sys.stderr)
        return 2
    lock = _lock_store(store.path)
    if lock is None:
        store.close()
        print(
            f"skewless controller: another controller is using {store_url}: "
            "one controller per store (stop the other one or use another --state-dir)",
            file=sys.stderr,
        )
        return 1

    if not token:
        try:
            token, token_path = ensure_token(state_dir)
        except OSError as exc:
            print(
                f"skewless controller: cannot keep a token in {state_dir}: {exc}", file=sys.stderr
            )
            store.close()
            lock.close()
            return 2
        print(
            f"skewless controller: no --token given: using the one in {token_path} "
            "(give it to routers, agents and the CLI as --token or SKEWLESS_TOKEN)",
            file=sys.stderr,
            flush=True,
        )

    import uvicorn

    from skewless.controller.api import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(
            f"skewless controller: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr
        )
        return 1
    sock.listen(1024)
    bound = sock.getsockname()[1]
    app = create_app(store, token=token, tick=args.tick, planner=planner)
    config = uvicorn.Config(
        app, log_level=args.log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.watch.close()  # long-polls answer 204 now instead of being cancelled
            await super().shutdown(sockets=sockets)

    server = Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"skewless controller: listening on http://{shown}:{bound} (store {store_url})", flush=True
    )
    try:
        server.run(
            sockets=[sock]
        )  # uvloop when installed (asyncio's loop adds ~40 ms per keep-alive GET here)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
        lock.close()
    return 0
