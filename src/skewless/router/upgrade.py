"""Hitless upgrade: a running router hands its listening sockets and the state that must
survive to a new router process, then drains and exits (HAProxy's ``-x``, Envoy's hot
restart).

Theory of operation
-------------------
The running router listens on a unix socket (``--upgrade-socket``, mode 0600, and the
peer must run as the same user). A new router started with ``--takeover PATH``:

1. connects and sends ``{"op": "takeover"}``;
2. receives ``{"op": "sockets", "listen": K, "admin": bool, "size": N}`` with the
   listening sockets attached (SCM_RIGHTS), then N bytes of JSON state: per worker, the
   route table in force, instance health and drain clocks, counters and pinned sessions;
3. starts serving on those very sockets (the same kernel accept queues: a connection
   waiting in the queue is accepted by whichever process calls ``accept`` first, so
   nothing is refused), then sends ``{"op": "ready"}``;
4. the old router closes its upgrade listener, answers ``{"op": "released"}``, stops
   accepting and drains (in-flight requests finish, keep-alive connections get
   ``Connection: close`` on their next response, tunnels get 1001 at the drain deadline)
   and exits 0; the new router then binds the upgrade socket path for the next upgrade.

If the new process dies or stalls before step 3, the old one keeps serving and listening.

The blocking parts run in a thread of the old process (``UpgradeListener``) and before
the event loop starts in the new one (``take_over``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("skewless.router")

MAX_FDS = 256
HELLO_TIMEOUT = 10.0
READY_TIMEOUT = 60.0
"""How long the old router waits for the new one to serve (imports, loading state)."""


class UpgradeError(Exception):
    pass


@dataclass
class Handover:
    """What a new router received from the old one."""

    listen: list[socket.socket]
    admin: socket.socket | None
    state: dict[str, Any]
    conn: socket.socket
    """Still open: ``ready`` is sent on it once the new router serves."""
    path: str = ""


def _read_line(sock: socket.socket, buf: bytearray, fds: list[int] | None = None) -> bytes:
    while b"\n" not in buf:
        if fds is None:
            chunk = sock.recv(65536)
        else:
            chunk, got, _flags, _addr = socket.recv_fds(sock, 65536, MAX_FDS)
            fds.extend(got)
        if not chunk:
            raise UpgradeError("the other router closed the upgrade connection")
        buf += chunk
    end = buf.index(b"\n")
    line = bytes(buf[:end])
    del buf[: end + 1]
    return line


def _message(line: bytes, op: str) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        raise UpgradeError(f"bad message on the upgrade socket: {line[:80]!r}") from None
    if not isinstance(msg, dict) or msg.get("op") != op:
        raise UpgradeError(f"expected {op!r} on the upgrade socket, got {line[:80]!r}")
    return msg


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


# ---- the new router ------------------------------------------------------------------


def take_over(path: str) -> Handover:
    """Connect to the running router at ``path`` and receive its sockets and state."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(READY_TIMEOUT)
    try:
        conn.connect(path)
    except OSError as error:
        conn.close()
        raise UpgradeError(
            f"--takeover {path}: no router answers there ({error.strerror or error}); "
            "start without --takeover"
        ) from None
    fds: list[int] = []
    try:
        _send(conn, {"op": "takeover", "pid": os.getpid()})
        buf = bytearray()
        head = _message(_read_line(conn, buf, fds), "sockets")
        size = int(head["size"])
        while len(buf) < size:
            chunk = conn.recv(1 << 20)
            if not chunk:
                raise UpgradeError("the old router closed the connection mid-state")
            buf += chunk
        state = json.loads(bytes(buf[:size]))
    except (OSError, ValueError, KeyError, UpgradeError) as error:
        for fd in fds:
            os.close(fd)
        conn.close()
        raise UpgradeError(f"--takeover {path}: {error}") from None
    n = int(head["listen"])
    socks = [socket.socket(fileno=fd) for fd in fds]
    admin = socks[n] if head.get("admin") and len(socks) > n else None
    return Handover(listen=socks[:n], admin=admin, state=state, conn=conn, path=path)


def confirm_ready(handover: Handover) -> None:
    """Tell the old router we serve; wait until it has let go of the upgrade socket."""
    conn = handover.conn
    try:
        _send(conn, {"op": "ready", "pid": os.getpid()})
        _message(_read_line(conn, bytearray()), "released")
    finally:
        conn.close()


# ---- the running router --------------------------------------------------------------


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class UpgradeListener:
    """The running router's end: a thread that serves takeover requests on ``path``.

    ``provide()`` returns the sockets to hand over and the state (called in this
    thread; it must be thread-safe). ``handed_over()`` is called once the new router
    serves: the caller stops accepting and drains.
    """

    def __init__(
        self,
        path: str,
        provide: Callable[[], tuple[list[socket.socket], socket.socket | None, dict[str, Any]]],
        handed_over: Callable[[], None],
    ) -> None:
        self.path = path
        self.provide = provide
        self.handed_over = handed_over
        self.sock: socket.socket | None = None
        self.done = False
        self.thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"UpgradeListener({self.path} done={self.done})"

    def bind(self) -> None:
        """Bind ``path`` (replacing a stale socket file, refusing a live one)."""
        p = Path(self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise UpgradeError(
                f"--upgrade-socket {self.path}: cannot create its directory: "
                f"{error.strerror or error}"
            ) from None
        if p.exists() or p.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                p.unlink()  # stale: nobody listens there
            else:
                raise UpgradeError(
                    f"--upgrade-socket {self.path}: another router is running there; "
                    f"to replace it give --takeover {self.path}, or choose another path"
                )
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as error:
            sock.close()
            raise UpgradeError(
                f"--upgrade-socket {self.path}: cannot bind: {error.strerror or error}"
            ) from None
        finally:
            os.umask(old)
        sock.listen(4)
        self.sock = sock

    def start(self) -> None:
        self.thread = threading.Thread(target=self._serve, name="upgrade", daemon=True)
        self.thread.start()

    def close(self, unlink: bool) -> None:
        sock = self.sock
        self.sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (a unix socket of ours)
            sock.close()
            if unlink:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def _serve(self) -> None:
        while not self.done and self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with conn:
                    self._handle(conn)
            except (OSError, ValueError, UpgradeError) as error:
                log.error("upgrade: takeover failed, this router keeps serving: %s", error)

    def _handle(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid not in (os.getuid(), 0):
            raise UpgradeError(f"refused a takeover from uid {uid}")
        conn.settimeout(HELLO_TIMEOUT)
        buf = bytearray()
        hello = _message(_read_line(conn, buf), "takeover")
        log.info("upgrade: process %s takes over", hello.get("pid"))
        listen, admin, state = self.provide()
        blob = json.dumps(state).encode()
        fds = [s.fileno() for s in listen] + ([admin.fileno()] if admin is not None else [])
        head = {"op": "sockets", "listen": len(listen), "admin": admin is not None}
        head["size"] = len(blob)
        socket.send_fds(conn, [json.dumps(head).encode() + b"\n"], fds)
        conn.sendall(blob)
        conn.settimeout(READY_TIMEOUT)
        ready = _message(_read_line(conn, buf), "ready")
        self.done = True
        self.close(unlink=False)  # the new router binds the path next
        _send(conn, {"op": "released"})
        log.info("upgrade: process %s serves; this one drains and exits", ready.get("pid"))
        self.handed_over()


def default_path(state_dir: Path, port: int) -> str:
    return str(state_dir / f"router-{port}.sock")


def takeover_argv(argv: list[str], path: str) -> list[str]:
    """The command line of the process that takes over from this one (SIGUSR2)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--takeover":
            skip = True
        elif not arg.startswith("--takeover="):
            out.append(arg)
    return [*out, "--takeover", path]


def spawn_successor(argv: list[str], path: str) -> subprocess.Popen[bytes]:
    """``kill -USR2``: start ``skewless router SAME-FLAGS --takeover PATH``. It inherits
    the environment, the working directory, stdout and stderr, and no socket: it gets
    those over ``path``."""
    cmd = [sys.executable, "-m", "skewless", "router", *takeover_argv(argv, path)]
    log.info("SIGUSR2: starting a router to take over: %s", " ".join(cmd))
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)
