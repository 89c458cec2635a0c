"""HTTP/1.1 message-head checks and rewriting for a proxy, pure (RFC 9110 / 9112).

The byte-level parse is httptools (llhttp, strict mode): it already refuses Content-Length
together with Transfer-Encoding, duplicate Content-Length, signs or junk in lengths and
chunk sizes, obs-fold and whitespace before the colon. What it lets through and a proxy
must still refuse, or must rewrite, is decided here, on the header list it produced:

- a request line whose target is not origin-form, absolute-form or ``*``; an HTTP version
  other than 1.0 / 1.1; a missing (1.1) or repeated ``Host``;
- any ``Transfer-Encoding`` other than exactly ``chunked`` (we never forward a coding we
  do not understand, and we re-chunk bodies ourselves);
- hop-by-hop headers (``Connection``, the fields it names, ``Keep-Alive``,
  ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``) are
  removed; the proxy writes its own framing and connection management.

Headers are ``(name, value)`` byte pairs as httptools delivers them.
"""

from __future__ import annotations

from typing import NamedTuple

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
STANDARD_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class RequestHead(NamedTuple):
    host: bytes
    """The Host header value (lower-cased), ``b""`` if absent (HTTP/1.0)."""
    cookie: bytes | None
    """Every Cookie header joined with ``; `` (RFC 9113 style), or None."""
    forward: list[tuple[bytes, bytes]]
    """End-to-end headers to forward (Host included), original order and case."""
    chunked: bool
    content_length: int
    """-1 when absent."""
    upgrade: bool
    """A WebSocket upgrade was asked (``Connection: upgrade`` + ``Upgrade: websocket``)."""
    close: bool
    """The client asked to close after this exchange (``Connection: close``)."""
    xff: bytes | None
    """Incoming ``X-Forwarded-For`` (to append to)."""
    forwarded: bytes | None
    """Incoming ``Forwarded`` (to append to)."""


class BadRequest(Exception):
    """A message head a proxy must not forward (answer 400 and close)."""


def _connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def check_target(method: bytes, url: bytes) -> None:
    if not url:
        raise BadRequest("empty request target")
    if b" " in url or b"\t" in url:
        raise BadRequest("whitespace in the request target")
    first = url[:1]
    if first == b"/":
        return
    if url == b"*" and method == b"OPTIONS":
        return
    low = url[:8].lower()
    if low.startswith(b"http://") or low.startswith(b"https://"):
        return
    raise BadRequest("request target must be a path, an absolute URL or * (OPTIONS)")


def parse_request_head(
    headers: list[tuple[bytes, bytes]], http_version: str, method: bytes, url: bytes
) -> RequestHead:
    """Check and split a request head; raise ``BadRequest`` naming the problem."""
    if http_version != "1.1" and http_version != "1.0":
        raise BadRequest(f"HTTP version {http_version} is not supported")
    check_target(method, url)
    host: bytes | None = None
    cookies: list[bytes] = []
    forward: list[tuple[bytes, bytes]] = []
    chunked = False
    length = -1
    upgrade_asked = False
    conn: set[bytes] = set()
    xff: bytes | None = None
    fwd: bytes | None = None
    for name, value in headers:
        low = name.lower()
        if low == b"host":
            if host is not None:
                raise BadRequest("more than one Host header")
            host = value.strip().lower()
            forward.append((name, value))
        elif low == b"cookie":
            cookies.append(value)
            forward.append((name, value))
        elif low == b"content-length":
            length = int(value)  # llhttp already refused anything but digits and repeats
        elif low == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or chunked:
                raise BadRequest(f"Transfer-Encoding {value.decode('latin-1')!r} is not supported")
            chunked = True
        elif low == b"connection":
            conn |= _connection_tokens(value)
        elif low == b"upgrade":
            upgrade_asked = value.strip().lower() == b"websocket"
        elif low == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif low == b"forwarded":
            fwd = value if fwd is None else fwd + b", " + value
        elif low not in HOP_BY_HOP:
            forward.append((name, value))
    if host is None:
        if http_version == "1.1":
            raise BadRequest("missing Host header")
        host = b""
    if conn - STANDARD_CONNECTION_TOKENS:
        extra = conn - STANDARD_CONNECTION_TOKENS
        forward = [(n, v) for n, v in forward if n.lower() not in extra]
    close = b"close" in conn or (http_version == "1.0" and b"keep-alive" not in conn)
    return RequestHead(
        host=host,
        cookie=b"; ".join(cookies) if cookies else None,
        forward=forward,
        chunked=chunked,
        content_length=length,
        upgrade=upgrade_asked and b"upgrade" in conn,
        close=close,
        xff=xff,
        forwarded=fwd,
    )


class ResponseHead(NamedTuple):
    forward: list[tuple[bytes, bytes]]
    """End-to-end headers (no framing, no hop-by-hop)."""
    chunked: bool
    content_length: int
    """-1 when absent (then the body is chunked, or runs to the close)."""
    close: bool
    """The instance will close the connection after this response."""


def parse_response_head(headers: list[tuple[bytes, bytes]], status: int) -> ResponseHead:
    forward: list[tuple[bytes, bytes]] = []
    chunked = False
    length = -1
    conn: set[bytes] = set()
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            length = int(value)
        elif low == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif low == b"connection":
            conn |= _connection_tokens(value)
        elif low not in HOP_BY_HOP or (status == 101 and low == b"upgrade"):
            forward.append((name, value))
    if conn - STANDARD_CONNECTION_TOKENS:
        extra = conn - STANDARD_CONNECTION_TOKENS
        forward = [(n, v) for n, v in forward if n.lower() not in extra]
    return ResponseHead(
        forward=forward, chunked=chunked, content_length=length, close=b"close" in conn
    )


def render_head(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """``first_line`` CRLF, ``name: value`` CRLF each, CRLF."""
    parts = [first_line]
    for name, value in headers:
        parts.append(name + b": " + value)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)
