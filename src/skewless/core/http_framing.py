"""HTTP/1.1 message-head checks and rewriting for a proxy, pure (RFC 9110 / 9112).

The byte-level parse is httptools (llhttp, strict mode): it already refuses Content-Length
together with Transfer-Encoding, duplicate Content-Length, signs or junk in lengths and
chunk sizes, obs-fold and whitespace before the colon. What it lets through and a proxy
must still refuse, or must rewrite, is decided here, on the header list it produced:

- a request line whose target is not origin-form, absolute-form or ``*``; an HTTP version
  other than 1.0 / 1.1; a missing (1.1) or repeated ``Host``, a ``Host`` with characters
  no URI host has, an absolute-form target whose authority is not the ``Host`` (the
  router would route by one name and the instance serve another);
- any ``Transfer-Encoding`` other than exactly ``chunked`` (we never forward a coding we
  do not understand, and we re-chunk bodies ourselves), and any in HTTP/1.0 (RFC 9112
  6.1: its framing is faulty); a ``Content-Length`` of 2^63 or more (a signed 64-bit
  length downstream would wrap);
- a request that asks for a protocol upgrade and carries a body (the parser treats what
  follows an upgrade request's head as the new protocol);
- a header name that reads as a framing or routing header once ``_`` becomes ``-``
  (``Transfer_Encoding``): servers that map names to CGI-style variables would obey it;
- in a response, any ``Transfer-Encoding`` other than exactly ``chunked`` (a body we
  cannot frame is a 502, never passed on);
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
MAX_CONTENT_LENGTH = (1 << 63) - 1
HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]"
"""RFC 3986 host and port: unreserved, pct-encoded, sub-delims, ``:`` and IP-literal."""


REQUEST_SPECIAL = frozenset(
    {
        b"host",
        b"cookie",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"forwarded",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
    }
)
RESPONSE_SPECIAL = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
COMMON_CONNECTION = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
    b"Keep-Alive": frozenset({b"keep-alive"}),
    b"Upgrade": frozenset({b"upgrade"}),
    b"upgrade": frozenset({b"upgrade"}),
}


class RequestHead(NamedTuple):
    host: bytes
    """The Host header value (lower-cased), ``b""`` if absent (HTTP/1.0)."""
    cookie: bytes | None
    """Every Cookie header joined with ``; `` (RFC 9113 style), or None."""
    forward: list[bytes]
    """End-to-end header lines to forward, rendered ``Name: value`` (Host included),
    in their original order and case."""
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
    captured: bytes | None
    """The value of the first header named in ``capture`` (the pin header), if any."""


_new = tuple.__new__


class BadRequest(Exception):
    """A message head a proxy must not forward (answer 400 and close)."""


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    common = COMMON_CONNECTION.get(value)
    if common is not None:
        return common
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def check_target(method: bytes, url: bytes) -> None:
    if url[:1] == b"/" and b" " not in url and b"\t" not in url:
        return
    if not url:
        raise BadRequest("empty request target")
    if b" " in url or b"\t" in url:
        raise BadRequest("whitespace in the request target")
    if url == b"*" and method == b"OPTIONS":
        return
    low = url[:8].lower()
    if low.startswith(b"http://") or low.startswith(b"https://"):
        return
    raise BadRequest("request target must be a path, an absolute URL or * (OPTIONS)")


def _drop_named(lines: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    return [line for line in lines if line.partition(b":")[0].lower() not in names]


def parse_request_head(
    headers: list[tuple[bytes, bytes]],
    http_version: str,
    method: bytes,
    url: bytes,
    capture: frozenset[bytes] = frozenset(),
) -> RequestHead:
    """Check and split a request head; raise ``BadRequest`` naming the problem."""
    if http_version != "1.1" and http_version != "1.0":
        raise BadRequest(f"HTTP version {http_version} is not supported")
    if url[:1] != b"/" or b" " in url or b"\t" in url:
        check_target(method, url)
    host: bytes | None = None
    cookie: bytes | None = None
    forward: list[bytes] = []
    chunked = False
    length = -1
    upgrade_asked = False
    upgrade_header = False
    conn: frozenset[bytes] = frozenset()
    xff: bytes | None = None
    fwd: bytes | None = None
    captured: bytes | None = None
    for name, value in headers:
        low = name.lower()
        if low not in REQUEST_SPECIAL:
            if b"_" in low and low.replace(b"_", b"-") in REQUEST_SPECIAL:
                raise BadRequest(f"header name {name.decode('latin-1')!r} has _ for -")
            if low in capture and captured is None:
                captured = value.strip()
            forward.append(name + b": " + value)
        elif low == b"host":
            if host is not None:
                raise BadRequest("more than one Host header")
            host = value.strip().lower()
            if host.translate(None, HOST_CHARS):
                raise BadRequest("Host header is not a host name")
            forward.append(name + b": " + value)
        elif low == b"cookie":
            cookie = value if cookie is None else cookie + b"; " + value
            forward.append(name + b": " + value)
        elif low == b"content-length":
            length = int(value)  # llhttp already refused anything but digits and repeats
            if length > MAX_CONTENT_LENGTH:
                raise BadRequest("Content-Length is too large")
        elif low == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or chunked:
                raise BadRequest(f"Transfer-Encoding {value.decode('latin-1')!r} is not supported")
            chunked = True
        elif low == b"connection":
            conn = conn | _connection_tokens(value)
        elif low == b"upgrade":
            upgrade_asked = value.strip().lower() == b"websocket"
            upgrade_header = True
        elif low == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif low == b"forwarded":
            fwd = value if fwd is None else fwd + b", " + value
        # the rest of REQUEST_SPECIAL is dropped: hop-by-hop, or X-Forwarded-Proto, which
        # the router sets itself (it is where the client's protocol is known)
    if url[:1] != b"/" and url != b"*":
        authority = url.partition(b"://")[2]
        for end in b"/?#":
            authority = authority.partition(bytes((end,)))[0]
        authority = authority.lower()
        if not authority or authority.translate(None, HOST_CHARS):
            raise BadRequest("the request target has no valid host")
        if host is None:
            host = authority
            forward.append(b"Host: " + authority)
        elif host != authority:
            raise BadRequest("the request target and the Host header name different hosts")
    if host is None:
        if http_version == "1.1":
            raise BadRequest("missing Host header")
        host = b""
        forward.append(b"Host: ")  # HTTP/1.0 without one: we forward HTTP/1.1 (RFC 9112 3.2)
    if chunked and http_version == "1.0":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    if upgrade_header and (chunked or length > 0) and b"upgrade" in conn:
        # the parser reads an upgrade request as bodiless (what follows its head belongs
        # to the new protocol): a body would be cut off, or taken for tunnel bytes
        raise BadRequest("a request asking for a protocol upgrade cannot carry a body")
    if conn:
        extra = conn - STANDARD_CONNECTION_TOKENS
        if extra:
            forward = _drop_named(forward, extra)
    close = b"close" in conn or (http_version == "1.0" and b"keep-alive" not in conn)
    # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function
    return _new(
        RequestHead,
        (
            host,
            cookie,
            forward,
            chunked,
            length,
            upgrade_asked and b"upgrade" in conn,
            close,
            xff,
            fwd,
            captured,
        ),
    )


class ResponseHead(NamedTuple):
    forward: list[bytes]
    """End-to-end header lines ``Name: value`` (no framing, no hop-by-hop)."""
    chunked: bool
    content_length: int
    """-1 when absent (then the body is chunked, or runs to the close)."""
    close: bool
    """The instance will close the connection after this response."""


def parse_response_head(headers: list[tuple[bytes, bytes]], status: int) -> ResponseHead:
    forward: list[bytes] = []
    chunked = False
    length = -1
    conn: frozenset[bytes] = frozenset()
    for name, value in headers:
        low = name.lower()
        if low not in RESPONSE_SPECIAL:
            forward.append(name + b": " + value)
        elif low == b"content-length":
            length = int(value)
        elif low == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or chunked:
                raise BadRequest(f"response Transfer-Encoding {value.decode('latin-1')!r}")
            chunked = True
        elif low == b"connection":
            conn = conn | _connection_tokens(value)
        elif status == 101 and low == b"upgrade":
            forward.append(name + b": " + value)
    if conn:
        extra = conn - STANDARD_CONNECTION_TOKENS
        if extra:
            forward = _drop_named(forward, extra)
    return _new(ResponseHead, (forward, chunked, length, b"close" in conn))
