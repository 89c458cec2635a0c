"""The client side of the proxy: one ``ClientProtocol`` per client connection, one
``Exchange`` per request.

Theory of operation
-------------------
httptools parses the client's bytes and calls back: ``on_headers_complete`` checks the
head (``skewless.core.http_framing``), makes an ``Exchange`` and, if no other exchange is
being answered on this connection, routes it as soon as the read that completed the
head is parsed (``Exchange.start``: app by Host, pin, version, instance, then an idle
pooled connection or a new one), so bad bytes in the same read stop it first. Body bytes are
written to the instance as they arrive (re-chunked when chunked), or held in a small
buffer while the connection to the instance is being opened; the client is paused when
that buffer or the instance's socket buffer is full, so memory stays bounded.

A request pipelined behind another waits in ``queue`` (and the client is paused) until
the one before it is answered: responses leave in request order.

Retry: an exchange that could not connect to its instance has not sent a byte, so it
tries another eligible instance of the same version (at most ``MAX_ATTEMPTS``). Once any
byte was written to an instance the exchange never moves.

The replay lane: clients repeat their requests byte for byte on a keep-alive connection
(the same path, headers and cookie). When a read is byte-identical to the previous read,
which was exactly one request without a body that httptools parsed and we accepted, and
the parser is at a message boundary (``boundary``), the earlier parse is reused
(``memo``) and httptools is not called: identical bytes in the same parser state parse
identically. The parser is at a boundary after a read whose last request ended, with no
body, exactly at the end of the read (llhttp skips bare CRLFs between messages, and any
other byte after it would have started or failed a new message).

The header lane: a client walking an app on one connection sends the same header block
(Host, cookies, Accept ...) with a new path each time. A read made of a strict request
line (``GET``, an origin-form target of RFC 3986 characters, ``HTTP/1.1``) followed by
the header block of the previous bodiless GET, byte for byte, reuses that parse with the
new target (``block_memo``): the header block parses identically, and the request line
is one that httptools accepts with the same meaning (a strict subset of its grammar).
Anything else (another method, an absolute-form target, a byte outside the set, a head
over the size limit) goes to httptools.

Failures: no eligible instance -> 503 + Retry-After; no response head within the upstream
timeout -> 504; the instance fails before the response head -> 502; it fails after the
head -> the client connection is closed (the client sees a short body or a missing final
chunk, never a complete-looking truncated one).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING

import httptools

from skewless.core.http_framing import (
    BadRequest,
    RequestHead,
    parse_request_head,
)
from skewless.core.pin import Pin
from skewless.core.routing import VersionPool
from skewless.router import clock
from skewless.router.exchange import (
    HIGH_WATER,
    PAUSE_QUEUE,
    PAUSE_UPGRADE,
    REASONS,
    Exchange,
    render,
)
from skewless.router.ws_tunnel import WsTunnel

if TYPE_CHECKING:
    from skewless.router.instance import Instance
    from skewless.router.server import AppRuntime, RouterServer
    from skewless.router.upstream import UpstreamProtocol

log = logging.getLogger("skewless.router")

_GET_LINE = re.compile(rb"GET /[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]* HTTP/1\.1").fullmatch
"""A request line the header lane takes: GET, origin-form target of RFC 3986 characters
(unreserved, sub-delims, ``:@/?%``), HTTP/1.1; httptools accepts every such line."""

RequestMemo = tuple[
    bytes, bool, bool, bytes, bytes, "bytes | None", "bytes | None", frozenset[bytes]
]
"""(method, close asked, HTTP/1.1, head for the instance, host, cookie, pin header, the
pin header names it was parsed with) of a request without a body."""


class _Closed:
    """The callbacks of a closed connection's parser: none."""


_CLOSED_PARSER = httptools.HttpRequestParser(_Closed())
"""Takes a closed connection's parser's place (see ``connection_lost``)."""


class Refusal(Exception):
    """Raised inside a parser callback: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ClientProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "active",
        "awaiting_head",
        "block_memo",
        "boundary",
        "chunked",
        "closing",
        "fwd_host",
        "fwd_lines",
        "head_bytes",
        "head_size",
        "head_started",
        "headers",
        "heads",
        "http11",
        "idle_since",
        "ip",
        "last_capture",
        "last_head",
        "last_headers",
        "last_rest",
        "last_version",
        "memo",
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
        "seen",
        "seen_block",
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
        self.idle_since = clock.mono - server.fresh_shift
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
        self.last_rest: bytes | None = None
        """The upstream head after the request line, rendered for ``last_head``."""
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
        self.boundary = True
        """The parser holds no byte of an unfinished request (see the replay lane)."""
        self.heads = 0
        """Request heads completed in the current read."""
        self.seen = b""
        """The last read that was exactly one request: a memo once it comes twice."""
        self.memo: tuple[bytes, RequestMemo] | None = None
        """(raw read, its parse) for the replay lane."""
        self.seen_block = b""
        """The header block (from the first CRLF) of the last read that was one request."""
        self.block_memo: tuple[bytes, RequestMemo] | None = None
        """(header block, its parse with the head after the request line) for the header
        lane."""

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
        self.server.blocked.pop(self, None)
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
        # Break the cycles (parser <-> its callbacks, exchange <-> client) so that a
        # closed connection is freed by reference counting, not left to the collector
        # (whose full collections stalled the loop under connection churn).
        self.receiving = None
        self.to_start = None
        self.parser = _CLOSED_PARSER  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            ws = self.tunnel.ws
            if ws is not None:
                ws.from_client(data)
            else:
                self.tunnel.write(data)
            return
        if self.upgrade_buffer is not None:  # upgrade asked, no 101 yet: hold (bounded)
            self.upgrade_buffer.append(data)
            self.pause(PAUSE_UPGRADE)
            return
        memo = self.memo
        if (
            memo is not None
            and data == memo[0]
            and self.boundary
            and not self.head_bytes  # a CRLF-only read left head bytes counted: parse
            and self.active is None
            and self.refusal is None
            and not self.closing
            and memo[1][7] is self.server.pin_headers
        ):
            self.replay(memo[1])
            return
        memo = self.block_memo
        if (
            memo is not None
            and self.boundary
            and not self.head_bytes
            and data.endswith(memo[0])
            and self.active is None
            and self.refusal is None
            and not self.closing
            and memo[1][7] is self.server.pin_headers
            and len(data) <= self.server.max_head
        ):
            line = len(data) - len(memo[0])
            if _GET_LINE(data, 0, line) is not None:
                self.replay(memo[1], data[: line + 2] + memo[1][3])
                return
        was_boundary = self.boundary
        self.boundary = False
        self.heads = 0
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
            if self.refusal is not None:
                return  # refused already: the parser only repeats its error on new bytes
            cause = error.__context__
            if isinstance(cause, Refusal):
                self.refuse(cause.status, str(cause))
            else:
                log.exception("bug while parsing a request", exc_info=cause)
                self.refuse(500, "internal error")
            return
        except httptools.HttpParserError as error:
            if self.refusal is not None:
                return
            self.refuse(400, str(error) or "malformed request")
            return
        if self.awaiting_head:
            if self.head_bytes > self.server.max_head:
                self.refuse(431, "request head too large")
                return
            if data.endswith(b"\r\n\r\n"):
                self.boundary = True
                if was_boundary and self.heads == 1:
                    if data == self.seen:  # the same request twice in a row: memorise
                        self.remember(data)
                    else:
                        self.seen = data
                        line = data.find(b"\r\n")
                        block = data[line:]
                        if block == self.seen_block:  # the same headers twice in a row
                            self.remember_block(data, line)
                        else:
                            self.seen_block = block
        pending = self.to_start
        if pending is not None:
            self.to_start = None
            ex = pending[0]
            if self.active is ex and not ex.done:
                ex.start(pending[1], pending[2], pending[3])

    def remember(self, data: bytes) -> None:
        """Make ``data`` (one whole request, just parsed) the replay lane's memo, if it
        has no body and asks for no upgrade."""
        head = self.last_head
        ex = self.receiving
        if head is None or ex is None or head.chunked or head.content_length > 0 or head.upgrade:
            return
        self.memo = (
            data,
            (
                ex.method,
                head.close,
                self.http11,
                ex.head,
                head.host,
                head.cookie,
                head.captured,
                self.last_capture,
            ),
        )

    def remember_block(self, data: bytes, line: int) -> None:
        """Make the header block of ``data`` (one whole request, just parsed, whose
        request line ends at ``line``) the header lane's memo, if the request is a
        bodiless GET whose request line the lane would take."""
        head = self.last_head
        ex = self.receiving
        rest = self.last_rest
        if (
            head is None
            or ex is None
            or rest is None
            or ex.method != b"GET"
            or head.chunked
            or head.content_length > 0
            or head.upgrade
            or not self.http11
            or _GET_LINE(data, 0, line) is None
        ):
            return
        self.block_memo = (
            data[line:],
            (
                ex.method,
                head.close,
                True,
                rest,
                head.host,
                head.cookie,
                head.captured,
                self.last_capture,
            ),
        )

    def replay(self, memo: RequestMemo, head: bytes | None = None) -> None:
        """The replay lane: what ``on_headers_complete`` and ``on_message_complete`` did
        for the same bytes, without parsing them again.

        Keep the two in step: a per-request step that is not a pure function of the bytes
        (a counter, a limit, a timer, a flag of the server) added to those callbacks
        must be added here too; a new check of the bytes themselves needs nothing.
        """
        method, close, http11, memo_head, host, cookie, captured, _ = memo
        server = self.server
        ex = Exchange(self, method, False, close or server.draining, False)
        ex.head = memo_head if head is None else head
        ex.request_done = True
        self.http11 = http11
        self.chunked = False
        self.receiving = ex
        self.active = ex
        self.idle_since = server.mono
        ex.start(host, cookie, captured)

    def start_parsed(self) -> None:
        pending = self.to_start
        if pending is not None:
            self.to_start = None
            ex, host, cookie, pin_value = pending
            if self.active is ex and not ex.done:
                ex.start(host, cookie, pin_value)

    def pause_writing(self) -> None:
        # A slow client: stop reading the instance. Its silence is then ours, not a
        # timeout (``held`` tells the sweep).
        conn = self.tunnel or (self.active.conn if self.active is not None else None)
        if conn is not None and conn.transport is not None and not conn.closed:
            conn.held = True
            conn.transport.pause_reading()
        if self.transport is not None:  # the send timeout runs from now (see sweep)
            self.server.blocked[self] = [clock.mono, self.transport.get_write_buffer_size()]

    def resume_writing(self) -> None:
        self.server.blocked.pop(self, None)
        conn = self.tunnel or (self.active.conn if self.active is not None else None)
        if conn is not None and conn.transport is not None and not conn.closed:
            conn.held = False
            conn.last_io = clock.mono
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
        # not origin-form: the target's authority is checked against Host, or is the host
        origin = url[:1] == b"/" and b" " not in url and b"\t" not in url
        try:
            # Clients repeat their headers on a keep-alive connection (what HPACK
            # exploits): an identical header list with an origin-form target parses to
            # the identical head (with another target, the head may name another host).
            if (
                origin
                and headers == self.last_headers
                and version == self.last_version
                and server.pin_headers is self.last_capture
            ):
                head = self.last_head
                rest = self.last_rest
            else:
                rest = None
                head = parse_request_head(headers, version, method, url, server.pin_headers)
                self.last_headers = headers if origin else None
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
        if rest is None:
            out = [*head.forward]
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
            rest = self.last_rest = b"\r\n".join(out)
        ex.head = b"".join((method, b" ", url, b" HTTP/1.1\r\n", rest))
        self.heads += 1
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
        node = b"[" + ip + b"]" if b":" in ip else ip  # RFC 7239: IPv6 in brackets
        fwd = b'for="' + node + b'";proto=http'
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
        ws = None
        if conn.ex is not None:
            ws = conn.ws = WsTunnel(conn, self, conn.ex)
        held = self.upgrade_buffer or []
        self.upgrade_buffer = None
        for chunk in held:
            if ws is not None:
                ws.from_client(chunk)
            else:
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
        queue = self.queue
        if queue and not queue[-1][0].request_done:
            queue.pop()  # the bad bytes are in the body of the last one queued: never start it
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
