"""One HTTP/1.1 connection from the router to an instance (an asyncio Protocol).

It parses the instance's responses with httptools and hands each event to the
``Exchange`` it is bound to; between exchanges it sits in its instance's idle pool. After
a ``101`` it becomes a raw tunnel. Backpressure: when its write buffer fills, the client
stops being read; when the client's write buffer fills, this connection stops reading.

The replay lane: an app answers the same response head again and again (only ``Date``
changes, once a second). When a read is exactly one response whose head is
byte-identical to one httptools already parsed for this instance (``Instance.memo``,
made when a head came twice in a row, so that heads that always differ cost no memo),
and the parser is at a message boundary, the earlier parse is reused and httptools is
not called: identical bytes in the same parser state parse identically, so framing stays
as strict as httptools makes it. The parser is known to be at a boundary only when the
byte accounting of the previous message ended exactly at the end of a read (``boundary``);
anything else (a chunked body, an interim response, a head split over reads, stray bytes
after a response) turns the lane off for the rest of the connection.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from skewless.core.http_framing import BadRequest, parse_response_head
from skewless.router import clock
from skewless.router.instance import Instance

if TYPE_CHECKING:
    from skewless.router.exchange import Exchange
    from skewless.router.ws_tunnel import WsTunnel

HIGH_WATER = 256 * 1024
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
"""Reason phrases are ours (RFC 9112: a client ignores them), so no on_status callback."""
monotonic = time.monotonic


class _Closed:
    """The callbacks of a closed connection's parser: none."""


_CLOSED_PARSER = httptools.HttpResponseParser(_Closed())
"""Takes a closed connection's parser's place (see ``connection_lost``)."""


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "boundary",
        "closed",
        "ex",
        "headers",
        "held",
        "instance",
        "interim",
        "last_io",
        "left",
        "parser",
        "raw",
        "transport",
        "tunnel",
        "ws",
    )

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.tunnel = False
        self.interim = False
        self.held = False
        """Reading paused because the client is slow (the upstream timeout waits)."""
        self.ws: WsTunnel | None = None
        """After a 101: the tunnel, which follows frames to close it cleanly."""
        self.last_io = monotonic()
        self.boundary = True
        """The parser holds no byte of an unfinished message (see the replay lane)."""
        self.raw: bytes | None = None
        """The head of the message being parsed, when it started a read and is accounted."""
        self.left = 0
        """Bytes read minus bytes of the accounted message: 0 at its end = a boundary."""

    def __repr__(self) -> str:
        state = "tunnel" if self.tunnel else ("busy" if self.ex else "idle")
        return f"UpstreamProtocol({self.instance.id} {state} closed={self.closed})"

    # ---- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.last_io = clock.mono
        ex = self.ex
        if ex is None:  # nothing asked: an idle connection must stay silent
            self.close()
            return
        if self.tunnel:
            if self.ws is not None:
                self.ws.from_instance(data)
            else:
                ex.client.write(data)
            return
        client = ex.client
        if self.boundary:
            memo = self.instance.memo
            if (
                memo is not None
                and len(data) == memo[0]
                and data.startswith(memo[1])
                and not ex.is_head
            ):
                # keep in step with on_headers_complete / on_message_complete
                ex.replay_response(memo, data)
                client.flush()
                return
            self.boundary = False
            end = data.find(b"\r\n\r\n")
            self.raw = data[: end + 4] if end >= 0 else None
            self.left = len(data)
        elif self.raw is not None:
            self.left += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if self.tunnel and rest:
                if self.ws is not None:
                    self.ws.from_instance(rest)
                else:
                    client.write(rest)
        except (httptools.HttpParserError, BadRequest, ValueError):
            self.raw = None
            if self.ex is not None:
                self.ex.upstream_failed("invalid response from the instance")
            self.close()
        client.flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.instance.discard(self)
        ex = self.ex
        if ex is not None:
            self.ex = None
            if self.tunnel:
                ex.tunnel_closed()
            else:
                ex.upstream_lost()
            ex.client.flush()
        # parser <-> its callbacks: freed by reference counting, not by the collector
        self.parser = _CLOSED_PARSER  # type: ignore[assignment]

    def pause_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.pause(2)

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.resume(2)

    # ---- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.ex is None:
            # more bytes than the response we asked for, in the same read: read as the
            # next answer they would poison the queue (Kettle 2022), so the connection goes
            raise BadRequest("a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None:
            self.raw = None
            return
        headers = self.headers
        self.headers = []
        status = self.parser.get_status_code()
        reason = REASONS.get(status, b"Unknown")
        if status < 200:
            self.raw = None  # interim and 101: no accounting (rare)
            if status != 101:
                self.interim = True
                ex.client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
                return
        head = parse_response_head(headers, status)
        raw = self.raw
        if raw is not None:
            if ex.is_head or status == 204 or status == 304:
                self.left -= len(raw)
            elif head.chunked or head.content_length < 0:
                self.raw = None
            else:
                self.left -= len(raw) + head.content_length
        ex.response_head(status, reason, head, self)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None and body:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        if self.tunnel:  # llhttp ends the 101 "message"; the tunnel lives on
            return
        if self.interim:
            self.interim = False
            return
        ex = self.ex
        keep_alive = self.parser.should_keep_alive()
        raw = self.raw
        if raw is not None:
            self.raw = None
            if self.left == 0:  # this message ended exactly where the read ended
                self.boundary = True
                status = self.parser.get_status_code()
                if (
                    keep_alive
                    and ex is not None
                    and not ex.is_head
                    and status != 204
                    and status != 304
                ):
                    instance = self.instance
                    if raw == instance.seen:  # the same head twice in a row: memorise
                        instance.memo = ex.response_memo(raw)
                    else:
                        instance.seen = raw
        if ex is not None:
            ex.response_complete(keep_alive)

    # ---- used by Exchange ------------------------------------------------------------

    def bind(self, ex: Exchange, data: list[bytes]) -> None:
        self.ex = ex
        self.last_io = monotonic()
        assert self.transport is not None
        self.transport.writelines(data)

    def release(self, reusable: bool) -> None:
        """The exchange is over: back to the idle pool, or closed."""
        self.ex = None
        if self.held:
            self.held = False
            if self.transport is not None:
                self.transport.resume_reading()
        if reusable and not self.closed and not self.tunnel:
            self.last_io = monotonic()
            self.instance.put_idle(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.instance.discard(self)
            if self.transport is not None:
                self.transport.close()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)
