"""One HTTP/1.1 connection from the router to an instance (an asyncio Protocol).

It parses the instance's responses with httptools and hands each event to the
``Exchange`` it is bound to; between exchanges it sits in its instance's idle pool. After
a ``101`` it becomes a raw tunnel. Backpressure: when its write buffer fills, the client
stops being read; when the client's write buffer fills, this connection stops reading.
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

HIGH_WATER = 256 * 1024
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
"""Reason phrases are ours (RFC 9112: a client ignores them), so no on_status callback."""
monotonic = time.monotonic


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "closed",
        "ex",
        "headers",
        "held",
        "instance",
        "interim",
        "last_io",
        "parser",
        "transport",
        "tunnel",
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
        self.last_io = monotonic()

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
            ex.client.write(data)
            return
        client = ex.client
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if self.tunnel and rest:
                client.write(rest)
        except (httptools.HttpParserError, BadRequest, ValueError):
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
            return
        headers = self.headers
        self.headers = []
        status = self.parser.get_status_code()
        reason = REASONS.get(status, b"Unknown")
        if status < 200 and status != 101:
            self.interim = True
            ex.client.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
            return
        head = parse_response_head(headers, status)
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
        if ex is not None:
            ex.response_complete(self.parser.should_keep_alive())

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
