"""Defences against slow and abusive clients: the connection limit, the file descriptor
budget, and the counters of what the timers cut.

Theory of operation
-------------------
A worker holds at most ``max_connections`` client connections. Beyond it the listener
does not hand the connection to a ``ClientProtocol``: a ``ShedProtocol`` writes a fixed
``503`` with ``Retry-After`` and ``Connection: close``, half-closes, and waits (bounded:
``SHED_LINGER`` seconds, ``SHED_MAX`` at once) for the client to close, so the client
reads the 503 instead of a reset. Past ``SHED_MAX`` lingering ones, a new excess
connection is reset at once. No request byte is parsed, nothing reaches an instance.

File descriptors: every client connection may hold one upstream connection, so a worker
needs about two descriptors per client plus a reserve (listeners, pooled idle connections,
health checks, the admin listener, logs). At start the soft ``RLIMIT_NOFILE`` is raised to
the hard limit and ``max_connections`` is capped to what it allows
(``connection_budget``).

The timers themselves are in ``RouterServer.sweep`` (one sweep per worker every 0.1 s, no
timer per request): header timeout (408), body progress (408), send progress (close),
keep-alive idle (close). This module only counts what they cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
from typing import TYPE_CHECKING

from skewless.router import clock

if TYPE_CHECKING:
    from skewless.router.server import RouterServer

log = logging.getLogger("skewless.router")

FD_RESERVE = 256
"""Descriptors kept for everything that is not a client/upstream pair."""
SHED_LINGER = 1.0
"""How long a shed connection may stay open for its client to read the 503 and close."""
SHED_MAX = 256
"""Shed connections lingering at once; beyond this an excess connection is reset."""
SHED_DISCARD = 64 * 1024
"""Bytes a shed connection may send us (discarded) before it is reset."""
TIMEOUT_KINDS = ("header", "body", "send", "buffer", "idle", "upstream")

SHED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 32\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"too many connections, try again\n"
)


LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with a TCP reset, discarding what the kernel still holds for the peer.

    A plain close of a socket whose peer reads nothing leaves an orphan: the kernel keeps
    trying to deliver its send queue (megabytes on a fast link) for minutes, and a
    thousand of them exhaust the machine's TCP memory (``TCP: out of memory`` for every
    process). SO_LINGER 0 frees it at once.
    """
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    transport.abort()


def limit_unsent(sock: socket.socket, lowat: int) -> None:
    """Let the kernel queue at most about ``lowat`` unsent bytes per client connection
    (TCP_NOTSENT_LOWAT, set on the listening socket: accepted connections inherit it).

    Without it the kernel autotunes each connection's send buffer up to ``tcp_wmem``'s
    maximum (4 MiB here) and accepts that much from us whether or not the client reads:
    a thousand slow readers made the router pull gigabytes from the instance before any
    of them blocked. With it a send beyond ``lowat`` unsent bytes waits (the transport
    buffers it, then pauses: see ``ClientProtocol.pause_writing``), while bytes in
    flight still grow with the client's window, so a client that reads keeps its speed.
    ``0`` keeps the kernel default.
    """
    if lowat <= 0 or not hasattr(socket, "TCP_NOTSENT_LOWAT"):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, lowat)
    except OSError as error:  # not TCP (a unix socket), or an old kernel
        log.warning("could not set TCP_NOTSENT_LOWAT on the listener: %s", error)


def connection_budget(requested: int, nofile: int) -> int:
    """Client connections a worker may hold with ``nofile`` descriptors: two per client
    (its own and one upstream) after the reserve and the lingering shed connections,
    never more than ``requested``."""
    return max(1, min(requested, (nofile - FD_RESERVE - SHED_MAX) // 2))


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, error)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Counters:
    """What the defences did, cumulative since the worker started."""

    __slots__ = ("shed", "timeouts")

    def __init__(self) -> None:
        self.shed = 0
        self.timeouts = dict.fromkeys(TIMEOUT_KINDS, 0)

    def __repr__(self) -> str:
        return f"Counters(shed={self.shed} timeouts={self.timeouts})"


class ShedProtocol(asyncio.Protocol):
    """A connection over the limit: a quick 503, then closed."""

    __slots__ = ("received", "server", "since", "transport")

    def __init__(self, server: RouterServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.since = clock.mono

    def __repr__(self) -> str:
        return f"ShedProtocol(received={self.received})"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.counters.shed += 1
        if len(server.shedding) >= SHED_MAX:
            reset(transport)
            return
        server.shedding[self] = None
        self.transport.write(SHED_RESPONSE)  # type: ignore[union-attr]
        if self.transport.can_write_eof():  # type: ignore[union-attr]
            self.transport.write_eof()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)  # the request is not read: discarded
        if self.received > SHED_DISCARD:
            reset(self.transport)

    def eof_received(self) -> bool | None:
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.shedding.pop(self, None)

    def expire(self, now: float) -> bool:
        """Reset a connection whose client did not close in time."""
        if now - self.since > SHED_LINGER and self.transport is not None:
            reset(self.transport)
            return True
        return False


def render_metrics(server: RouterServer) -> str:
    """Prometheus lines for the connection defences (appended to ``/metrics``)."""
    c = server.counters
    w = f'worker="{server.options.worker}"'
    buffered = 0
    for client in server.clients:
        transport = client.transport
        if transport is not None and not transport.is_closing():
            buffered += transport.get_write_buffer_size()
    lines = [
        "# HELP skewless_client_connections Open client connections.",
        "# TYPE skewless_client_connections gauge",
        f"skewless_client_connections{{{w}}} {len(server.clients)}",
        "# HELP skewless_client_connections_max Client connections a worker holds at most.",
        "# TYPE skewless_client_connections_max gauge",
        f"skewless_client_connections_max{{{w}}} {server.options.max_connections}",
        "# HELP skewless_shed_connections_total Connections over the limit answered 503.",
        "# TYPE skewless_shed_connections_total counter",
        f"skewless_shed_connections_total{{{w}}} {c.shed}",
        "# HELP skewless_timeouts_total Connections cut by a timer, by kind "
        "(header/body: 408; send: client not reading; buffer: clients not reading held "
        "too much; idle: keep-alive; upstream: 504).",
        "# TYPE skewless_timeouts_total counter",
    ]
    for kind in TIMEOUT_KINDS:
        lines.append(f'skewless_timeouts_total{{kind="{kind}",{w}}} {c.timeouts[kind]}')
    lines += [
        "# HELP skewless_client_send_blocked Client connections not reading their response.",
        "# TYPE skewless_client_send_blocked gauge",
        f"skewless_client_send_blocked{{{w}}} {len(server.blocked)}",
        "# HELP skewless_client_buffered_bytes Response bytes buffered for clients.",
        "# TYPE skewless_client_buffered_bytes gauge",
        f"skewless_client_buffered_bytes{{{w}}} {buffered}",
    ]
    return "\n".join(lines) + "\n"
