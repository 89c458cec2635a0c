"""One request and its response: ``Exchange`` routes a parsed request (app by Host,
pin, version, instance), sends it over a pooled or new connection, streams the body,
turns the instance's response into ours, and accounts for it.

See ``skewless.router.client`` for the connection it belongs to; the theory of
operation is there.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from skewless.core.http_framing import ResponseHead
from skewless.core.model import VersionState
from skewless.core.pin import Pin
from skewless.core.routing import REPINNED, ROUTED, decide, fallback, least_outstanding
from skewless.router import clock
from skewless.router.instance import MAX_IDLE

ResponseMemo = tuple[int, bytes, int, bytes, ResponseHead, bytes, bytes]
"""(size of the whole response, raw head, status, reason, parsed head, rendered block,
our whole head when we add nothing but the version)."""

if TYPE_CHECKING:
    from skewless.router.client import ClientProtocol
    from skewless.router.instance import Instance
    from skewless.router.metrics import VersionStats
    from skewless.router.server import AppRuntime
    from skewless.router.upstream import UpstreamProtocol

log = logging.getLogger("skewless.router")

MAX_ATTEMPTS = 3
RECONNECT_PAUSE = 0.1
"""Seconds between rounds of connect attempts when no instance of a version answered."""
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
    unpinned: tuple[Pin | None, int, bool] | None = None
    """(old pin, routing kind, pin via header) of a request assigned by weight."""
    attempts = 0
    body_bytes = 0
    """Request body bytes received (the sweep's body progress check)."""
    body_mark_at = 0.0
    body_mark_bytes = 0
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
    memo: tuple[int, bytes, ResponseHead] | None = None
    """(status, reason, parsed head) of the response head httptools parsed, for the
    instance's replay lane."""
    head_out: list[bytes] | None = None
    """The client's ``out`` buffer our response head went into, and where: while it is
    unsent, a failure of the instance can still become a clean 502."""
    head_at = 0

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
        self.body_bytes += len(data)
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
            via_header = pin_value is not None
            if pin_value:
                pin = server.codec.verify(app.name, pin_value, now, app.idle, app.life)
            if pin is None and cookie is not None:
                # (junk in the header does not throw away a valid cookie pin either)
                pin = server.codec.verify_cookie(
                    app.name, cookie, app.cookie_b, now, app.idle, app.life
                )
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
        else:
            # Not pinned yet: if no instance of this version can be reached, the session
            # may still go to another version (it has seen none): see connect_failed.
            self.unpinned = (pin, kind, via_header)
            if app.pin:
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
        if nxt is None and self.unpinned is not None:
            alt = fallback(self.app.policy, self.version)
            if alt is not None:
                # A new session whose version cannot be reached right now (its last
                # instance just died, before any health check noticed): it has seen no
                # version yet, so another one serving it is no skew, and beats a 503.
                log.info("new session: %s unreachable, assigning %s", self.version, alt.version)
                old, kind, via_header = self.unpinned
                self.unpinned = None
                app = self.app
                self.version = alt.version
                self.version_b = app.versions_b[alt.version]
                self.stats = app.stats[alt.version]
                if app.pin:
                    self.extra = self.new_pin(app, old, alt.version, kind, clock.wall, via_header)
                nxt = least_outstanding(alt.candidates, rand, exclude=tried)
        if nxt is None:
            self.instance = None
            server = self.client.server
            if (
                server.loop is not None
                and monotonic() - self.started < server.options.connect_timeout
            ):
                # Nothing was sent anywhere, so waiting is safe: a killed instance is
                # restarted on its address, or the table gains another one, within
                # moments. Try the version again shortly, within the connect timeout.
                server.loop.call_later(RECONNECT_PAUSE, self.reconnect)
                return
            self.local(503, f"could not connect to an instance of {self.version}\n", retry=True)
            return
        log.info(
            "retrying %s on %s after a connect failure to %s", self.version, nxt.id, instance.id
        )
        self.send_to(nxt)

    def reconnect(self) -> None:
        """Another round of connect attempts on this exchange's version (see above)."""
        if self.done or self.app is None:
            return
        app = self.app = self.client.server.apps.get(self.app.name, self.app)  # reloaded?
        pool = app.policy.pools.get(self.version)
        nxt = None
        if pool is not None and pool.state is not RETIRED:
            nxt = least_outstanding(pool.candidates, rand)
        if nxt is None:
            self.local(503, f"could not connect to an instance of {self.version}\n", retry=True)
            return
        self.tried = None
        self.attempts = 0
        self.send_to(nxt)

    # ---- response side ---------------------------------------------------------------

    def response_head(
        self, status: int, reason: bytes, head: ResponseHead, conn: UpstreamProtocol
    ) -> None:
        if status == 101 and not self.upgrade:
            conn.close()
            self.upstream_failed("the instance switched protocols without being asked")
            return
        self.memo = (status, reason, head)
        self.emit_head(status, [b"HTTP/1.1 %d %s" % (status, reason), *head.forward], head, conn)

    def replay_response(self, memo: ResponseMemo, data: bytes) -> None:
        """The replay lane (see ``skewless.router.upstream``): ``data`` is one whole
        response whose head is byte-identical to ``memo``'s, which httptools parsed."""
        _, raw, status, _, head, block, plain = memo
        client = self.client
        if (
            self.extra is None
            and not self.close_after
            and not self.upgrade
            and (self.request_done or not self.has_body)
            and client.http11
            and not client.server.draining
        ):
            # nothing of ours beyond the version: the head rendered once for the memo
            # (an answer before the request body is in says Connection: close: emit_head)
            self.status = status
            self.response_started = True
            client.out.append(plain + data[len(raw) :])
        else:
            conn = self.conn
            assert conn is not None
            self.emit_head(status, [block], head, conn)
            client.out.append(data[len(raw) :])
        self.response_complete(True)

    def response_memo(self, raw: bytes) -> ResponseMemo | None:
        """The replay lane's memo of the response just parsed, whose head is ``raw``."""
        memo = self.memo
        if memo is None:
            return None
        status, reason, head = memo
        block = b"\r\n".join([b"HTTP/1.1 %d %s" % (status, reason), *head.forward])
        length = head.content_length
        plain = block + b"\r\nSkewless-Version: " + self.version_b
        plain += b"\r\nContent-Length: %d\r\n\r\n" % length
        return (len(raw) + length, raw, status, reason, head, block, plain)

    def emit_head(
        self, status: int, lines: list[bytes], head: ResponseHead, conn: UpstreamProtocol
    ) -> None:
        """Our response head: ``lines`` (the status line and forwarded header lines, a
        list of ours to extend), then the router's own lines and the framing, into the
        client's output."""
        client = self.client
        self.status = status
        self.response_started = True
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
        if self.upgrade or (self.has_body and not self.request_done):
            # the client may already be talking the new protocol; or we answer before its
            # body is in, and we cannot skip the rest of it (the client learns it now)
            self.close_after = True
        if self.close_after or client.server.draining:
            self.close_after = True
            lines.append(b"Connection: close")
        elif not client.http11:
            lines.append(b"Connection: keep-alive")
        lines.append(b"\r\n")
        out = self.head_out = client.out
        self.head_at = len(out)
        out.append(b"\r\n".join(lines))
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
                if conn.held:
                    conn.held = False
                    conn.transport.resume_reading()  # type: ignore[union-attr]
                idle = instance.idle  # type: ignore[union-attr]
                if instance.removed or len(idle) >= MAX_IDLE:  # type: ignore[union-attr]
                    conn.close()
                else:
                    idle.append(conn)
            else:
                conn.close()
        if instance is not None:
            instance.inflight -= 1
            instance.consecutive_failures = 0  # an answer: the passive streak ends
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
        if self.instance is not None:
            self.client.server.connect_failed(self.instance)  # a passive failure too
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.ex = None
            conn.close()
        out = self.head_out
        if self.response_started and out is self.client.out and out is not None:
            # nothing of the response has left yet (the bad bytes came in the same read
            # as its head): take it back and answer 502 instead of a cut connection
            del out[self.head_at :]
            self.response_started = self.rechunk = self.until_close = False
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
        if self.instance is not None:
            self.client.server.connect_failed(self.instance)  # a passive failure too
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
