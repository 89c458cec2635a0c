"""A WebSocket tunnel that the router can close cleanly: 1001 "going away" at a drain
deadline, instead of cutting the TCP connections (kamal-proxy cancels them at once).

Theory of operation
-------------------
The router tunnels WebSocket bytes without decoding them, but to inject a close frame it
must know where frames begin: a frame written in the middle of another one would corrupt
the stream. ``FrameCursor`` follows frame boundaries in one direction (RFC 6455 5.2: the
2-14 byte header gives the payload length; payloads are skipped, never unmasked or
copied). At the deadline (``go_away``) the tunnel waits until both directions sit at a
boundary (at most ``GRACE`` seconds), then sends the client an unmasked close frame
1001 and the instance a masked one (client-to-server frames are masked), closes the
instance connection, drops further data frames, and closes the client connection when
the client answers with its own close frame (or after ``GRACE``). A stream that does not
parse as WebSocket frames (the router tunnels only ``Upgrade: websocket``, but a client
may lie) is simply closed at the deadline.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from skewless.router import clock

if TYPE_CHECKING:
    from skewless.router.client import ClientProtocol
    from skewless.router.exchange import Exchange
    from skewless.router.upstream import UpstreamProtocol

log = logging.getLogger("skewless.router")

GOING_AWAY = 1001
GRACE = 1.0
"""Seconds to reach a frame boundary, then for the client's closing reply."""
CLOSE = 0x8
_RESERVED = frozenset({3, 4, 5, 6, 7, 11, 12, 13, 14, 15})

OPEN, WAITING, SENT, FINISHED = 0, 1, 2, 3
"""Tunnel states: open; deadline passed, waiting for frame boundaries; close sent to the
client, waiting for its reply; finished."""


def close_frame(code: int, reason: bytes, mask: bytes | None = None) -> bytes:
    """A close frame: unmasked (server to client) or masked with ``mask`` (4 bytes)."""
    payload = code.to_bytes(2, "big") + reason[:123]
    if mask is None:
        return bytes((0x80 | CLOSE, len(payload))) + payload
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | CLOSE, 0x80 | len(payload))) + mask + masked


class FrameCursor:
    """Where the frame boundaries are in one direction of a WebSocket stream."""

    __slots__ = ("broken", "close_seen", "head", "left", "opcode")

    def __init__(self) -> None:
        self.head = b""
        """Bytes of a frame header received so far (a header may span reads)."""
        self.left = 0
        """Payload bytes of the current frame still to come."""
        self.opcode = 0
        self.broken = False
        """Not a WebSocket stream: boundaries unknown."""
        self.close_seen = False

    def __repr__(self) -> str:
        return f"FrameCursor(left={self.left} head={len(self.head)} broken={self.broken})"

    @property
    def at_boundary(self) -> bool:
        return not self.broken and not self.left and not self.head

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n and not self.broken:
            if self.left:
                take = min(self.left, n - pos)
                self.left -= take
                pos += take
                if not self.left and self.opcode == CLOSE:
                    self.close_seen = True
                continue
            old = len(self.head)
            head = self.head + data[pos : pos + 14 - old]
            size = _header_size(head)
            if size is None or len(head) < size:
                pos += len(head) - old
                self.head = head
                continue
            pos += size - old
            self.head = b""
            opcode = head[0] & 0x0F
            if opcode in _RESERVED:
                self.broken = True
                return
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            self.opcode = opcode
            self.left = length
            if not length and opcode == CLOSE:
                self.close_seen = True


def _header_size(head: bytes) -> int | None:
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if head[1] & 0x80 else 0)


class WsTunnel:
    """Both directions of one tunnel, and its clean close."""

    __slots__ = ("client", "conn", "down", "ex", "since", "state", "up")

    def __init__(self, conn: UpstreamProtocol, client: ClientProtocol, ex: Exchange) -> None:
        self.conn = conn
        self.client = client
        self.ex = ex
        self.up = FrameCursor()
        """Instance -> client."""
        self.down = FrameCursor()
        """Client -> instance."""
        self.state = OPEN
        self.since = 0.0
        client.server.tunnels.add(self)

    def __repr__(self) -> str:
        return f"WsTunnel(state={self.state} up={self.up!r} down={self.down!r})"

    def from_client(self, data: bytes) -> None:
        down = self.down
        down.feed(data)
        if self.state == OPEN:
            self.conn.write(data)
        elif self.state == WAITING:
            self.conn.write(data)
            self.try_close()
        elif self.state == SENT and (down.close_seen or down.broken):
            self.finish()

    def from_instance(self, data: bytes) -> None:
        if self.state >= SENT:
            return
        self.up.feed(data)
        self.client.write(data)
        if self.state == WAITING:
            self.try_close()

    def go_away(self) -> None:
        """The drain deadline has come: close with 1001 as soon as the frames allow."""
        if self.state == OPEN:
            self.state = WAITING
            self.since = clock.mono
            self.try_close()

    def check(self, now: float) -> None:
        """Called by the tick: give up waiting after ``GRACE``."""
        if self.state in (WAITING, SENT) and now - self.since > GRACE:
            if self.state == WAITING:
                log.info("tunnel mid-frame at its drain deadline: closing it")
                self.conn.ex = None
                self.conn.close()
            self.finish()

    def try_close(self) -> None:
        up, down = self.up, self.down
        if up.broken or down.broken:
            self.conn.ex = None
            self.conn.close()
            self.finish()
            return
        if not (up.at_boundary and down.at_boundary):
            return
        self.state = SENT
        self.since = clock.mono
        self.client.write(close_frame(GOING_AWAY, b"going away"))
        conn = self.conn
        conn.write(close_frame(GOING_AWAY, b"going away", os.urandom(4)))
        conn.ex = None  # its close is ours: the client connection stays for the reply
        conn.close()
        if down.close_seen:  # the client had already started the closing handshake
            self.finish()

    def finish(self) -> None:
        if self.state != FINISHED:
            self.state = FINISHED
            self.client.tunnel = None
            self.ex.tunnel_closed()  # accounts the exchange and closes the client
