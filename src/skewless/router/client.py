"""The client side of the proxy: one ``ClientProtocol`` per client connection, one
``Exchange`` per request.

Theory of operation
-------------------
httptools parses the client's bytes and calls back: ``on_headers_complete`` checks the
head (``skewless.core.http_framing``), makes an ``Exchange`` and, if no other exchange is
being answered on this connection, routes it at once (``Exchange.start``: app by Host,
pin, version, instance, then an idle pooled connection or a new one). Body bytes are
written to the instance as they arrive (re-chunked when chunked), or held in a small
buffer while the connection to the instance is being opened; the client is paused when
that buffer or the instance's socket buffer is full, so memory stays bounded.

A request pipelined behind another waits in ``queue`` (and the client is paused) until
the one before it is answered: responses leave in request order.

Retry: an exchange that could not connect to its instance has not sent a byte, so it
tries another eligible instance of the same version (at most ``MAX_ATTEMPTS``). Once any
byte was written to an instance the exchange never moves.

Failures: no eligible instance -> 503 + Retry-After; no response head within the upstream
timeout -> 504; the instance fails before the response head -> 502; it fails after the
head -> the client connection is closed (the client sees a short body or a missing final
chunk, never a complete-looking truncated one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from skewless.core.http_framing import (
    BadRequest,
    RequestHead,
    ResponseHead,
    check_target,
    parse_request_head,
)
from skewless.core.model import VersionState
from skewless.core.pin import Pin, find_cookie
from skewless.core.routing import REPINNED, ROUTED, VersionPool, decide, least_outstanding
from skewless.router import clock
from skewless.router.instance import MAX_IDLE

if TYPE_CHECKING:
    from skewless.router.instance import Instance
    from skewless.router.metrics import VersionStats
    from skewless.router.server import AppRuntime, RouterServer
    from skewless.router.upstream import UpstreamProtocol

log = logging.getLogger("skewless.router")

MAX_ATTEMPTS = 3
PENDING_LIMIT = 256 * 1024
HIGH_WATER = 256 * 1024
# pause reasons (bit mask)
PAUSE_PENDING = 1
PAUSE_UPSTREAM = 2
PAUSE_QUEUE = 4
PAUSE_UPGRADE = 8

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

rand = random.random
RETIRED = VersionState.RETIRED
monotonic = time.monotonic
wall = time.time


class Refusal(Exception):
    """Raised inside a parser callback: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Exchange:
    """One request and its response.

    No ``__slots__``: most fields keep their class default for a whole exchange, and an
    instance dict with only what changed is cheaper to make than 28 slots.
    """

    head = b""
    app: AppRuntime | None = None
    version = ""
    version_b = b""
    instance: Instance | None = None
    conn: UpstreamProtocol | None = None
    pending: list[bytes] | None = None
    pending_size = 0
    extra: list[tuple[bytes, bytes]] | None = None
    tried: list[Instance] | None = None
    attempts = 0
    request_done = False
    response_started = False
    response_done = False
    response_bytes = False
    rechunk = False
    until_close = False
    done = False
    status = 0
    sent_at = 0.0
    stats: VersionStats | None = None
    is_head = False

    def __init__(
        self, client: ClientProtocol, method: bytes, upgrade: bool, close: bool, has_body: bool
    ) -> None:
        self.client = client
        self.has_body = has_body
        self.method = method
        if method == b"HEAD":
            self.is_head = True
        self.upgrade = upgrade
        self.close_after = close
        self.started = monotonic()

    def __repr__(self) -> str:
        return (
            f"Exchange({self.method.decode()} app={self.app and self.app.name} "
            f"version={self.version} status={self.status} done={self.done})"
        )

    # ---- request side ----------------------------------------------------------------

    def body(self, data: bytes, chunked: bool) -> None:
        parts = (b"%x\r\n" % len(data), data, b"\r\n") if chunked else (data,)
        conn = self.conn
        if conn is not None:
            conn.last_io = self.client.server.mono
            conn.transport.writelines(parts)  # type: ignore[union-attr]
        elif not self.done:
            if self.pending is None:
                self.pending = []
            self.pending.extend(parts)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT:
                self.client.pause(PAUSE_PENDING)

    def request_complete(self, chunked: bool) -> None:
        if chunked:
            if self.conn is not None:
                self.conn.write(b"0\r\n\r\n")
            elif not self.done:
                if self.pending is None:
                    self.pending = []
                self.pending.append(b"0\r\n\r\n")
        self.request_done = True
        if self.response_done:
            self.finish()

    # ---- routing and connecting ------------------------------------------------------

    def start(self, head_host: bytes, cookie: bytes | None, pin_value: bytes | None) -> None:
        """Route the request and send it (called once it is this connection's turn)."""
        client = self.client
        server = client.server
        # Fast lane: the same Host and pin as this connection's last pinned request, with
        # nothing reloaded since (epoch) and the pin not due for a refresh.
        if (
            client.rc_epoch == server.epoch
            and head_host == client.rc_host
            and cookie == client.rc_cookie
            and pin_value == client.rc_pin_value
        ):
            pin = client.rc_pin
            app = client.rc_app
            now = clock.wall
            if (
                pin is not None
                and app is not None
                and now - pin.seen_at < app.refresh
                and now - pin.issued_at <= app.life
            ):
                pool = client.rc_pool
                self.app = app
                if pin_value is not None:
                    self.extra = [(app.header_b, pin.token)]
                version = self.version = pool.version
                self.version_b = app.versions_b[version]
                stats = self.stats = app.stats[version]
                stats.sessions[pin.session_id] = now
                stats.last_pinned_at = now
                candidates = pool.candidates
                if len(candidates) == 1:
                    self.send_to(candidates[0])
                elif candidates:
                    self.send_to(least_outstanding(candidates, rand))  # type: ignore[arg-type]
                else:
                    self.local(503, f"no ready instance of version {version}\n", retry=True)
                return
        app = server.host_cache.get(head_host)
        if app is None:
            app = server.app_for(head_host)
            if app is None:
                self.local(404, f"no app serves host {head_host.decode('latin-1')!r}\n")
                return
        self.app = app
        now = clock.wall
        pin = None
        if app.pin:
            token = pin_value
            via_header = token is not None
            if token is None and cookie is not None:
                token = find_cookie(cookie, app.cookie_b)
            if token:
                pin = server.codec.verify(app.name, token, now, app.idle, app.life)
            if pin is not None:
                pool = app.policy.pools.get(pin.version)
                if pool is not None and pool.state is not RETIRED:
                    kind = ROUTED
                else:
                    pool, kind = decide(app.policy, pin.version, rand())
            else:
                pool, kind = decide(app.policy, None, rand())
        else:
            via_header = False
            pool, kind = decide(app.policy, None, rand())
        if pool is None:
            self.local(503, "no version of this app can take new sessions now\n", retry=True)
            return
        version = self.version = pool.version
        self.version_b = app.versions_b[version]
        stats = self.stats = app.stats[version]
        if pin is not None and kind == ROUTED:
            if now - pin.seen_at >= app.refresh:
                pin = server.codec.refresh(pin, now)
                self.extra = [app.pin_header(pin, now, via_header)]
            else:
                if via_header:  # header clients get their token back on every response
                    self.extra = [(app.header_b, pin.token)]
                client.rc_epoch = server.epoch
                client.rc_host = head_host
                client.rc_cookie = cookie
                client.rc_pin_value = pin_value
                client.rc_app = app
                client.rc_pin = pin
                client.rc_pool = pool
        elif app.pin:
            self.extra = self.new_pin(app, pin, version, kind, now, via_header)
            pin = None
        if pin is not None:
            stats.sessions[pin.session_id] = now
            stats.last_pinned_at = now
        candidates = pool.candidates
        if not candidates:
            self.local(503, f"no ready instance of version {version}\n", retry=True)
            return
        if len(candidates) == 1:
            self.send_to(candidates[0])
        else:
            self.send_to(least_outstanding(candidates, rand))  # type: ignore[arg-type]

    def new_pin(
        self,
        app: AppRuntime,
        old: Pin | None,
        version: str,
        kind: int,
        now: float,
        via_header: bool,
    ) -> list[tuple[bytes, bytes]]:
        codec = self.client.server.codec
        if kind == REPINNED and old is not None:
            pin = codec.issue(
                app.name, version, now, session_id=old.session_id, issued_at=old.issued_at
            )
            extra = [(b"Skewless-Repinned", f"{old.version} -> {version}".encode())]
        else:
            pin = codec.issue(app.name, version, now)
            extra = []
        extra.append(app.pin_header(pin, now, via_header))
        stats = app.stats[version]
        stats.sessions[pin.session_id] = now
        stats.last_pinned_at = now
        return extra

    def send_to(self, instance: Instance) -> None:
        self.instance = instance
        instance.inflight += 1
        self.attempts += 1
        idle = instance.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.conn = conn
                self.sent_at = conn.last_io = clock.mono
                conn.ex = self
                if self.pending:
                    self.attach(conn)
                else:
                    conn.transport.write(self.head)  # type: ignore[union-attr]
                return
        self.client.server.open_upstream(self)

    def attach(self, conn: UpstreamProtocol) -> None:
        """Called with a connected upstream connection: write the head and held body."""
        if self.done:
            conn.release(True)
            return
        self.conn = conn
        self.sent_at = clock.mono
        if self.pending:
            data = [self.head, *self.pending]
            self.pending = None
            self.pending_size = 0
            self.client.resume(PAUSE_PENDING)
        else:
            data = [self.head]
        conn.bind(self, data)

    def connect_failed(self) -> None:
        """The connection to ``instance`` failed: nothing was sent, so try another."""
        instance = self.instance
        assert instance is not None and self.app is not None
        instance.inflight -= 1
        if self.stats is not None:
            self.stats.connect_failures += 1
        if self.done:
            return
        tried = self.tried
        if tried is None:
            tried = self.tried = []
        tried.append(instance)
        pool = self.app.policy.pools.get(self.version)
        nxt = None
        if pool is not None and self.attempts < MAX_ATTEMPTS:
            nxt = least_outstanding(pool.candidates, rand, exclude=tried)
        if nxt is None:
            self.instance = None
            self.local(503, f"could not connect to an instance of {self.version}\n", retry=True)
            return
        log.info(
            "retrying %s on %s after a connect failure to %s", self.version, nxt.id, instance.id
        )
        self.send_to(nxt)

    # ---- response side ---------------------------------------------------------------

    def response_head(
        self, status: int, reason: bytes, head: ResponseHead, conn: UpstreamProtocol
    ) -> None:
        client = self.client
        self.status = status
        self.response_started = True
        lines = head.forward
        lines.insert(0, b"HTTP/1.1 %d %s" % (status, reason))
        app = self.app
        if not (
            self.extra
            and app is not None
            and app.header_is_version
            and any(name is app.header_b for name, _ in self.extra)
        ):
            lines.append(b"Skewless-Version: " + self.version_b)
        if self.extra:
            for name, value in self.extra:
                lines.append(name + b": " + value)
        if status == 101:
            if not self.upgrade:
                self.upstream_failed("instance switched protocols without being asked")
                conn.close()
                return
            lines.append(b"Connection: Upgrade\r\n\r\n")
            client.write(b"\r\n".join(lines))  # before any tunnel byte
            conn.tunnel = True
            client.start_tunnel(conn)
            return
        if self.is_head or status == 204 or status == 304:
            if head.content_length >= 0:
                lines.append(b"Content-Length: %d" % head.content_length)
        elif head.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            self.rechunk = True
        elif head.content_length >= 0:
            lines.append(b"Content-Length: %d" % head.content_length)
        else:
            self.until_close = True
            if client.http11:
                lines.append(b"Transfer-Encoding: chunked")
                self.rechunk = True
            else:
                self.close_after = True
        if self.upgrade:
            self.close_after = True  # the client may already be talking the new protocol
        if self.close_after or client.server.draining:
            self.close_after = True
            lines.append(b"Connection: close")
        elif not client.http11:
            lines.append(b"Connection: keep-alive")
        lines.append(b"\r\n")
        client.out.append(b"\r\n".join(lines))
        if self.is_head:
            # httptools would wait for Content-Length body bytes that a HEAD never gets.
            self.response_complete(False)

    def response_body(self, data: bytes) -> None:
        out = self.client.out
        if self.rechunk:
            out.append(b"%x\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        else:
            out.append(data)

    def response_complete(self, keep_alive: bool) -> None:
        if self.response_done:
            return
        client = self.client
        if self.rechunk:
            client.out.append(b"0\r\n\r\n")
        self.response_done = True
        conn = self.conn
        instance = self.instance
        if conn is not None:
            self.conn = None
            conn.ex = None
            if keep_alive and self.request_done and not self.is_head and not conn.closed:
                conn.last_io = clock.mono
                idle = instance.idle  # type: ignore[union-attr]
                if instance.removed or len(idle) >= MAX_IDLE:  # type: ignore[union-attr]
                    conn.close()
                else:
                    idle.append(conn)
            else:
                conn.close()
        if instance is not None:
            instance.inflight -= 1
            self.instance = None
        stats = self.stats
        if stats is not None:
            self.stats = None
            stats.record(self.status, monotonic() - self.started)
        if not self.request_done and self.has_body:
            self.close_after = True  # answered before the body was read: cannot skip it
        if client.active is self:
            self.done = True
            client.exchange_done(self)

    def upstream_lost(self) -> None:
        """The instance's connection closed while this exchange used it."""
        if self.done or self.response_done:
            return
        self.conn = None
        if self.response_started and self.until_close:
            self.response_complete(False)
            return
        if self.response_started:
            self.upstream_failed("the instance closed the connection mid-response")
        else:
            self.upstream_failed("the instance closed the connection before answering")

    def upstream_failed(self, why: str) -> None:
        if self.done:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.ex = None
            conn.close()
        if self.response_started:
            log.warning("%s (%s): closing the client connection", why, self.instance_id())
            self.status = self.status or 502
            self.account()
            self.done = True
            self.client.abort()
        else:
            log.warning("%s (%s): 502", why, self.instance_id())
            self.local(502, f"{why}\n", close=True)

    def timed_out(self) -> None:
        """No response head within the upstream timeout."""
        if self.done:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.ex = None
            conn.close()
        if self.response_started:
            self.account()
            self.done = True
            self.client.abort()
        else:
            self.local(504, "the instance did not answer in time\n", close=True)

    def tunnel_closed(self) -> None:
        if not self.done:
            self.done = True
            self.account()
            self.client.close()

    def instance_id(self) -> str:
        return self.instance.id if self.instance is not None else "-"

    def local(self, status: int, text: str, *, close: bool = False, retry: bool = False) -> None:
        """Answer from the router itself (errors)."""
        if self.done:
            return
        body = text.encode()
        headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
        headers.append((b"Content-Length", b"%d" % len(body)))
        if retry:
            headers.append((b"Retry-After", b"1"))
        if self.version_b:
            headers.append((b"Skewless-Version", self.version_b))
        if (
            close
            or self.client.server.draining
            or self.upgrade
            or (not self.request_done and self.has_body)
        ):
            self.close_after = True
        if self.close_after:
            headers.append((b"Connection", b"close"))
        self.status = status
        self.response_started = True
        self.response_done = True
        self.client.write(
            render(b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"")), headers) + body
        )
        self.account()
        self.finish()

    def account(self) -> None:
        instance = self.instance
        if instance is not None:
            instance.inflight -= 1
            self.instance = None
        if self.stats is not None and self.status:
            self.stats.record(self.status, monotonic() - self.started)
            self.stats = None

    def finish(self) -> None:
        if self.done and self.client.active is not self:
            return
        self.done = True
        self.pending = None
        self.client.exchange_done(self)


def render(first: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    out = [first]
    for name, value in headers:
        out.append(name + b": " + value)
    out.append(b"\r\n")
    return b"\r\n".join(out)


class ClientProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "active",
        "awaiting_head",
        "chunked",
        "closing",
        "fwd_host",
        "fwd_lines",
        "head_bytes",
        "head_size",
        "head_started",
        "headers",
        "http11",
        "idle_since",
        "ip",
        "last_capture",
        "last_head",
        "last_headers",
        "last_version",
        "out",
        "parser",
        "paused",
        "queue",
        "rc_app",
        "rc_cookie",
        "rc_epoch",
        "rc_host",
        "rc_pin",
        "rc_pin_value",
        "rc_pool",
        "receiving",
        "refusal",
        "server",
        "to_start",
        "transport",
        "tunnel",
        "upgrade_buffer",
        "url",
    )

    def __init__(self, server: RouterServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.head_bytes = 0
        self.head_started = 0.0
        self.awaiting_head = True
        self.idle_since = monotonic()
        self.active: Exchange | None = None
        self.receiving: Exchange | None = None
        self.chunked = False
        self.queue: deque[tuple[Exchange, bytes, bytes | None, bytes | None]] | None = None
        self.paused = 0
        self.closing = False
        self.tunnel: UpstreamProtocol | None = None
        self.upgrade_buffer: list[bytes] | None = None
        self.refusal: tuple[int, str] | None = None
        self.out: list[bytes] = []
        self.last_headers: list[tuple[bytes, bytes]] | None = None
        self.last_version = ""
        self.last_capture: frozenset[bytes] | None = None
        self.last_head: RequestHead | None = None
        self.fwd_host: bytes | None = None
        self.fwd_lines = b""
        # the route cache of the fast lane in Exchange.start
        self.rc_epoch = -1
        self.rc_host = b""
        self.rc_cookie: bytes | None = None
        self.rc_pin_value: bytes | None = None
        self.rc_app: AppRuntime | None = None
        self.rc_pin: Pin | None = None
        self.rc_pool: VersionPool[Instance] | None = None
        """Response bytes buffered while one upstream read is parsed (see ``flush``)."""
        self.to_start: tuple[Exchange, bytes, bytes | None, bytes | None] | None = None
        self.http11 = True
        self.ip = b"unknown"

    def __repr__(self) -> str:
        return f"ClientProtocol({self.ip.decode()} active={self.active!r} paused={self.paused})"

    # ---- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.ip = str(peer[0]).encode()
        self.server.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.clients.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        ex = self.active
        if ex is not None and not ex.done:
            ex.done = True
            conn = ex.conn
            ex.conn = None
            if conn is not None:
                conn.ex = None
                conn.close()
            if not ex.status:
                ex.status = 499  # client closed the request (nginx's convention)
            ex.account()
        self.active = None
        if self.queue:
            self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.upgrade_buffer is not None:  # upgrade asked, no 101 yet: hold (bounded)
            self.upgrade_buffer.append(data)
            self.pause(PAUSE_UPGRADE)
            return
        if self.awaiting_head:
            if not self.head_bytes:
                self.head_started = self.server.mono
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            self.upgrade_buffer = [rest] if rest else []
            ex = self.receiving
            if ex is None or not ex.upgrade:  # an upgrade we do not tunnel (h2c ...)
                if ex is not None:
                    ex.close_after = True
                self.pause(PAUSE_UPGRADE)
            self.start_parsed()
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, Refusal):
                self.refuse(cause.status, str(cause))
            else:
                log.exception("bug while parsing a request", exc_info=cause)
                self.refuse(500, "internal error")
            return
        except httptools.HttpParserError as error:
            self.refuse(400, str(error) or "malformed request")
            return
        if self.awaiting_head and self.head_bytes > self.server.max_head:
            self.refuse(431, "request head too large")
            return
        pending = self.to_start
        if pending is not None:
            self.to_start = None
            ex = pending[0]
            if self.active is ex and not ex.done:
                ex.start(pending[1], pending[2], pending[3])

    def start_parsed(self) -> None:
        pending = self.to_start
        if pending is not None:
            self.to_start = None
            ex, host, cookie, pin_value = pending
            if self.active is ex and not ex.done:
                ex.start(host, cookie, pin_value)

    def pause_writing(self) -> None:
        conn = self.tunnel or (self.active.conn if self.active is not None else None)
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        conn = self.tunnel or (self.active.conn if self.active is not None else None)
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    # ---- httptools callbacks ---------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.awaiting_head = False
        headers = self.headers
        self.headers = []
        server = self.server
        if self.head_bytes > server.max_head or len(headers) > 100:
            # the read(s) of this head were big: measure the head itself
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in headers)
            if size > server.max_head or len(headers) > 100:
                raise Refusal(431, "request head too large")
        self.head_bytes = 0
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        if method == b"CONNECT":
            raise Refusal(405, "CONNECT is not supported")
        url = self.url
        self.url = b""
        try:
            # Clients repeat their headers on a keep-alive connection (what HPACK
            # exploits): an identical header list parses to the identical head.
            if (
                headers == self.last_headers
                and version == self.last_version
                and server.pin_headers is self.last_capture
            ):
                head = self.last_head
                if url[:1] != b"/" or b" " in url or b"\t" in url:
                    check_target(method, url)
            else:
                head = parse_request_head(headers, version, method, url, server.pin_headers)
                self.last_headers = headers
                self.last_version = version
                self.last_capture = server.pin_headers
                self.last_head = head
        except (BadRequest, ValueError) as error:
            raise Refusal(400, str(error)) from None
        self.http11 = version == "1.1"
        chunked = self.chunked = head.chunked
        ex = Exchange(
            self,
            method,
            head.upgrade,
            head.close or server.draining,
            chunked or head.content_length > 0,
        )
        # the head we send upstream: forwarded headers + our framing and forwarding
        out = [method + b" " + url + b" HTTP/1.1", *head.forward]
        if head.xff is None and head.forwarded is None and head.host == self.fwd_host:
            out.append(self.fwd_lines)  # the same as this connection's last request
        else:
            out.append(self.forwarding(head.host, head.xff, head.forwarded))
        if chunked:
            out.append(b"Transfer-Encoding: chunked")
        elif head.content_length >= 0:
            out.append(b"Content-Length: %d" % head.content_length)
        if head.upgrade:
            out.append(b"Connection: Upgrade\r\nUpgrade: websocket")
        out.append(b"\r\n")
        ex.head = b"\r\n".join(out)
        self.receiving = ex
        if self.active is None:
            # Started once this read is parsed: a request whose bytes all came together is
            # never forwarded if anything in them is bad.
            self.active = ex
            self.to_start = (ex, head.host, head.cookie, head.captured)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append((ex, head.host, head.cookie, head.captured))
            self.pause(PAUSE_QUEUE)

    def forwarding(self, host: bytes, xff: bytes | None, forwarded: bytes | None) -> bytes:
        """X-Forwarded-For, X-Forwarded-Proto and Forwarded lines for one request."""
        ip = self.ip
        fwd = b'for="' + ip + b'";proto=http'
        if host:
            fwd += b';host="' + host + b'"'
        lines = (
            b"X-Forwarded-For: "
            + (xff + b", " + ip if xff else ip)
            + b"\r\nX-Forwarded-Proto: http\r\nForwarded: "
            + (forwarded + b", " + fwd if forwarded else fwd)
        )
        if xff is None and forwarded is None:
            self.fwd_host = host
            self.fwd_lines = lines
        return lines

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is not None:
            ex.body(body, self.chunked)

    def on_message_complete(self) -> None:
        ex = self.receiving
        self.awaiting_head = True
        self.idle_since = self.server.mono
        if ex is not None:
            if self.chunked:
                ex.request_complete(True)
            else:
                ex.request_done = True
                if ex.response_done:
                    ex.finish()

    # ---- used by Exchange ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write now, after anything buffered in ``out``."""
        if self.out:
            self.out.append(data)
            self.flush()
        elif self.transport is not None and not self.closing:
            self.transport.write(data)

    def flush(self) -> None:
        """Send what response events buffered in ``out``: one send per read upstream."""
        out = self.out
        if out:
            self.out = []
            if self.transport is not None and not self.closing:
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.write(b"".join(out))

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def exchange_done(self, ex: Exchange) -> None:
        if self.active is not ex:
            return
        self.active = None
        server = self.server
        self.idle_since = server.mono
        if ex.close_after or self.closing:
            self.close()
            return
        queue = self.queue
        if not queue:
            if self.refusal is not None:
                self.send_refusal()
            elif server.draining and self.awaiting_head and not self.head_bytes:
                self.close()
            return
        if queue:
            nxt, host, cookie, pin_value = queue.popleft()
            if not queue:
                self.resume(PAUSE_QUEUE)
            self.active = nxt
            nxt.start(host, cookie, pin_value)

    def start_tunnel(self, conn: UpstreamProtocol) -> None:
        self.tunnel = conn
        held = self.upgrade_buffer or []
        self.upgrade_buffer = None
        for chunk in held:
            conn.write(chunk)
        self.resume(PAUSE_UPGRADE)

    def refuse(self, status: int, why: str) -> None:
        """Bad input: answer ``status`` and close, after the exchanges parsed before it.

        If the bad bytes belong to the request being answered, that request is abandoned:
        if its head already went to an instance, that connection is closed, so the
        instance never sees a complete request.
        """
        log.info("refused a request from %s: %d %s", self.ip.decode(), status, why)
        self.pause(PAUSE_QUEUE)
        self.refusal = (status, why)
        pending = self.to_start
        self.to_start = None
        ex = self.active
        if ex is not None and not ex.request_done:
            ex.done = True
            conn = ex.conn
            ex.conn = None
            if conn is not None:
                conn.ex = None
                conn.close()
            ex.status = status
            ex.account()
            self.active = None
        if self.active is None:
            self.send_refusal()
        elif pending is not None and pending[0] is self.active:
            self.active.start(*pending[1:])  # complete and good: answer it, then refuse

    def send_refusal(self) -> None:
        assert self.refusal is not None
        status, why = self.refusal
        body = f"{why}\n".encode()
        self.write(
            render(
                b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"")),
                [
                    (b"Content-Type", b"text/plain; charset=utf-8"),
                    (b"Content-Length", b"%d" % len(body)),
                    (b"Connection", b"close"),
                ],
            )
            + body
        )
        self.close()

    def close(self) -> None:
        if not self.closing:
            self.flush()
            self.closing = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.out = []
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
