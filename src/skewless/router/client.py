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

from skewless.core.http_framing import BadRequest, ResponseHead, parse_request_head
from skewless.core.pin import find_cookie, needs_refresh
from skewless.core.routing import NEW, REPINNED, ROUTED, decide, least_outstanding

if TYPE_CHECKING:
    from skewless.router.instance import Instance
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
monotonic = time.monotonic
wall = time.time


class Refusal(Exception):
    """Raised inside a parser callback: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Exchange:
    """One request and its response."""

    __slots__ = (
        "app",
        "attempts",
        "client",
        "close_after",
        "conn",
        "done",
        "extra",
        "has_body",
        "head",
        "instance",
        "is_head",
        "method",
        "pending",
        "pending_size",
        "rechunk",
        "request_done",
        "response_bytes",
        "response_done",
        "response_started",
        "sent_at",
        "started",
        "stats",
        "status",
        "tried",
        "until_close",
        "upgrade",
        "version",
        "version_b",
    )

    def __init__(
        self, client: ClientProtocol, method: bytes, upgrade: bool, close: bool, has_body: bool
    ) -> None:
        self.client = client
        self.has_body = has_body
        self.method = method
        self.is_head = method == b"HEAD"
        self.upgrade = upgrade
        self.close_after = close
        self.head = b""
        self.app: AppRuntime | None = None
        self.version = ""
        self.version_b = b""
        self.instance: Instance | None = None
        self.conn: UpstreamProtocol | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.extra: list[tuple[bytes, bytes]] = []
        self.tried: list[Instance] | None = None
        self.attempts = 0
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.response_bytes = False
        self.rechunk = False
        self.until_close = False
        self.done = False
        self.status = 0
        self.started = monotonic()
        self.sent_at = 0.0
        self.stats = None

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
            self.pending.extend(parts)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT:
                self.client.pause(PAUSE_PENDING)

    def request_complete(self, chunked: bool) -> None:
        if chunked:
            if self.conn is not None:
                self.conn.write(b"0\r\n\r\n")
            elif not self.done:
                self.pending.append(b"0\r\n\r\n")
        self.request_done = True
        if self.response_done:
            self.finish()

    # ---- routing and connecting ------------------------------------------------------

    def start(self, head_host: bytes, cookie: bytes | None, pin_value: bytes | None) -> None:
        """Route the request and send it (called once it is this connection's turn)."""
        client = self.client
        server = client.server
        app = server.app_for(head_host)
        if app is None:
            self.local(404, f"no app serves host {head_host.decode('latin-1')!r}\n", close=False)
            return
        self.app = app
        now = wall()
        pin = None
        if app.pin:
            token = pin_value
            via_header = token is not None
            if token is None and cookie is not None:
                token = find_cookie(cookie, app.cookie_b)
            if token:
                pin = server.codec.verify(app.name, token, now, app.idle, app.life)
            pool, kind = decide(app.policy, pin.version if pin is not None else None, rand())
        else:
            via_header = False
            pool, kind = decide(app.policy, None, rand())
        if pool is None:
            self.local(503, "no version of this app can take new sessions now\n", retry=True)
            return
        self.version = pool.version
        self.version_b = app.version_bytes(pool.version)
        stats = self.stats = app.stats_for(pool.version)
        if app.pin:
            codec = server.codec
            if kind == ROUTED:
                assert pin is not None
                if needs_refresh(pin, now, app.idle):
                    pin = codec.refresh(pin, now)
                    self.extra.append(app.pin_header(pin, now, via_header))
            elif kind == NEW:
                pin = codec.issue(app.name, pool.version, now)
                self.extra.append(app.pin_header(pin, now, via_header))
            else:
                assert kind == REPINNED and pin is not None
                old = pin.version
                pin = codec.issue(
                    app.name, pool.version, now, session_id=pin.session_id, issued_at=pin.issued_at
                )
                self.extra.append(app.pin_header(pin, now, via_header))
                self.extra.append((b"Skewless-Repinned", f"{old} -> {pool.version}".encode()))
            stats.seen_session(pin.session_id, now)
        candidates = pool.candidates
        if not candidates:
            self.local(503, f"no ready instance of version {pool.version}\n", retry=True)
            return
        instance = least_outstanding(candidates, rand)
        assert instance is not None
        self.send_to(instance)

    def send_to(self, instance: Instance) -> None:
        self.instance = instance
        instance.inflight += 1
        self.attempts += 1
        conn = instance.take_idle()
        if conn is not None:
            self.attach(conn)
        else:
            self.client.server.open_upstream(self)

    def attach(self, conn: UpstreamProtocol) -> None:
        """Called with a connected upstream connection: write the head and held body."""
        if self.done:
            conn.release(True)
            return
        self.conn = conn
        self.sent_at = monotonic()
        if self.pending:
            data = [self.head, *self.pending]
            self.pending = []
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
        headers = head.forward
        headers.append((b"Skewless-Version", self.version_b))
        if self.extra:
            headers.extend(self.extra)
        if status == 101:
            if not self.upgrade:
                self.upstream_failed("instance switched protocols without being asked")
                conn.close()
                return
            headers.append((b"Connection", b"Upgrade"))
            client.write(render(b"HTTP/1.1 101 " + reason, headers))
            conn.tunnel = True
            client.start_tunnel(conn)
            return
        if self.is_head or status == 204 or status == 304:
            if head.content_length >= 0:
                headers.append((b"Content-Length", b"%d" % head.content_length))
        elif head.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
            self.rechunk = True
        elif head.content_length >= 0:
            headers.append((b"Content-Length", b"%d" % head.content_length))
        else:
            self.until_close = True
            if client.http11:
                headers.append((b"Transfer-Encoding", b"chunked"))
                self.rechunk = True
            else:
                self.close_after = True
        if self.upgrade:
            self.close_after = True  # the client may already be talking the new protocol
        if self.close_after or client.server.draining:
            self.close_after = True
            headers.append((b"Connection", b"close"))
        elif not client.http11:
            headers.append((b"Connection", b"keep-alive"))
        client.write(render(b"HTTP/1.1 %d %s" % (status, reason), headers))
        if self.is_head:
            # httptools would wait for Content-Length body bytes that a HEAD never gets.
            self.response_complete(False)

    def response_body(self, data: bytes) -> None:
        transport = self.client.transport
        if self.rechunk:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))  # type: ignore[union-attr]
        else:
            transport.write(data)  # type: ignore[union-attr]

    def response_complete(self, keep_alive: bool) -> None:
        if self.response_done:
            return
        if self.rechunk:
            self.client.write(b"0\r\n\r\n")
        self.response_done = True
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.release(keep_alive and self.request_done and not self.is_head)
        self.account()
        if not self.request_done and self.has_body:
            self.close_after = True  # answered before the body was read: cannot skip it
        self.finish()

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
        self.pending = []
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
        "head_bytes",
        "head_size",
        "head_started",
        "headers",
        "http11",
        "idle_since",
        "ip",
        "parser",
        "paused",
        "queue",
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
        if self.to_start is not None:
            self.start_parsed()

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

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.server.max_head or len(self.headers) > 100:
            raise Refusal(431, "request head too large")

    def on_headers_complete(self) -> None:
        self.awaiting_head = False
        self.head_bytes = 0
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        if method == b"CONNECT":
            raise Refusal(405, "CONNECT is not supported")
        server = self.server
        try:
            head = parse_request_head(self.headers, version, method, self.url)
        except (BadRequest, ValueError) as error:
            raise Refusal(400, str(error)) from None
        self.http11 = version == "1.1"
        ex = Exchange(
            self,
            method,
            head.upgrade,
            head.close or server.draining,
            head.chunked or head.content_length > 0,
        )
        self.chunked = head.chunked
        # the head we send upstream: forwarded headers + our framing and forwarding
        ip = self.ip
        out = [method + b" " + self.url + b" HTTP/1.1"]
        for name, value in head.forward:
            out.append(name + b": " + value)
        out.append(b"X-Forwarded-For: " + (head.xff + b", " + ip if head.xff else ip))
        out.append(b"X-Forwarded-Proto: http")
        fwd = b'for="' + ip + b'";proto=http'
        if head.host:
            fwd += b';host="' + head.host + b'"'
        out.append(b"Forwarded: " + (head.forwarded + b", " + fwd if head.forwarded else fwd))
        if head.chunked:
            out.append(b"Transfer-Encoding: chunked")
        elif head.content_length >= 0:
            out.append(b"Content-Length: %d" % head.content_length)
        if head.upgrade:
            out.append(b"Connection: Upgrade")
            out.append(b"Upgrade: websocket")
        out.append(b"\r\n")
        ex.head = b"\r\n".join(out)
        pin_value = None
        names = server.pin_headers
        if names:
            for name, value in head.forward:
                if name.lower() in names:
                    pin_value = value.strip()
                    break
        self.receiving = ex
        if self.active is None:
            # Started once this read is parsed: a request whose bytes all came together is
            # never forwarded if anything in them is bad.
            self.active = ex
            self.to_start = (ex, head.host, head.cookie, pin_value)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append((ex, head.host, head.cookie, pin_value))
            self.pause(PAUSE_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is not None:
            ex.body(body, self.chunked)

    def on_message_complete(self) -> None:
        ex = self.receiving
        self.awaiting_head = True
        self.idle_since = self.server.mono
        if ex is not None:
            ex.request_complete(self.chunked)

    # ---- used by Exchange ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

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
        self.idle_since = self.server.mono
        if ex.close_after or self.closing:
            self.close()
            return
        queue = self.queue
        if not queue and self.refusal is not None:
            self.send_refusal()
            return
        if queue:
            nxt, host, cookie, pin_value = queue.popleft()
            if not queue:
                self.resume(PAUSE_QUEUE)
            self.active = nxt
            nxt.start(host, cookie, pin_value)
        elif self.server.draining and self.awaiting_head and not self.head_bytes:
            self.close()

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
            self.closing = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
