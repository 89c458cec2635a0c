"""A reference reading of a client's byte stream: the requests a strict RFC 9112 parser
frames from it, in order, and how the stream ends.

The fuzz oracle compares the router with this: every request the router forwards must be
the next request of this list (same method, target and body), and where this parser
finds an error the router must have refused (4xx and close) at that request or before.
The router may be stricter than the reference (it refuses ``Transfer_Encoding`` names,
methods llhttp does not know, heads over its limit); it may never be looser.

Empty lines (and lone CR or LF) before a request line are skipped, as llhttp does.
It reads only what the fuzzer generates: origin-form targets, HTTP/1.1 and 1.0, framing
by Content-Length or chunked. Chunk extensions are read loosely (any bytes but CR, LF and
NUL up to the CRLF): the router drops them when it re-chunks, so none can desync.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
REQUEST_LINE = re.compile(rb"(" + TCHAR + rb"+) +(/[\x21-\x7e]*) +HTTP/1\.([01])\r\n")
FIELD = re.compile(
    rb"(" + TCHAR + rb"+):[ \t]*((?:[\x21-\x7e\x80-\xff]+[ \t]+)*[\x21-\x7e\x80-\xff]*)[ \t]*\r\n"
)
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)([ \t]*;[^\r\n\x00]*)?\r\n")
HOST = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*")
EOL = re.compile(rb"[\r\n]")
MAX_LENGTH = (1 << 63) - 1
End = Literal["complete", "incomplete", "error", "closed"]


@dataclass
class Reading:
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(method, target, body) of every request framed cleanly, in order."""
    end: End = "complete"
    """complete: all bytes framed; incomplete: the last request is unfinished but valid so
    far; error: the request after ``requests`` is malformed; closed: the last request ends
    the connection (Connection: close, HTTP/1.0), so nothing after it is read."""
    why: str = ""


class _Incomplete(Exception):
    pass


class _Malformed(Exception):
    pass


def read_stream(data: bytes) -> Reading:
    out = Reading()
    pos = 0
    while pos < len(data):
        # empty lines before a request line are skipped (RFC 9112 2.2); llhttp also skips
        # lone CR and LF there. Harmless: the router writes its own request line.
        while pos < len(data) and data[pos] in b"\r\n":
            pos += 1
        if pos == len(data):
            break
        try:
            method, target, body, pos, closes = _one(data, pos)
        except _Incomplete:
            out.end = "incomplete"
            return out
        except _Malformed as error:
            out.end = "error"
            out.why = str(error)
            return out
        out.requests.append((method, target, body))
        if closes:
            out.end = "closed"
            return out
    return out


def _line_end(data: bytes, pos: int) -> int:
    """Where the CRLF ending the line at ``pos`` is; a bare CR or LF before it is an
    error (RFC 9112 2.2 lets a recipient accept a bare LF; we do not)."""
    m = EOL.search(data, pos)
    if m is None:
        raise _Incomplete
    i = m.start()
    if data[i] == 10:
        raise _Malformed("bare LF")
    if i + 1 == len(data):
        raise _Incomplete
    if data[i + 1] != 10:
        raise _Malformed("bare CR")
    return i


def _one(data: bytes, pos: int) -> tuple[str, str, bytes, int, bool]:
    end = _line_end(data, pos)
    m = REQUEST_LINE.fullmatch(data, pos, end + 2)
    if m is None:
        raise _Malformed("request line")
    method, target, minor = m.group(1), m.group(2), m.group(3)
    if method == b"CONNECT":
        raise _Malformed("CONNECT")
    pos = end + 2
    fields: list[tuple[bytes, bytes]] = []
    while True:
        end = _line_end(data, pos)
        if end == pos:
            pos += 2
            break
        m = FIELD.fullmatch(data, pos, end + 2)
        if m is None:
            raise _Malformed("header field")
        fields.append((m.group(1).lower(), m.group(2).rstrip(b" \t")))
        pos = end + 2
    hosts = [v for n, v in fields if n == b"host"]
    if len(hosts) > 1 or (minor == b"1" and not hosts):
        raise _Malformed("Host count")
    if hosts and not HOST.fullmatch(hosts[0]):
        raise _Malformed("Host value")
    te = [v for n, v in fields if n == b"transfer-encoding"]
    cl = [v for n, v in fields if n == b"content-length"]
    conn = b",".join(v for n, v in fields if n == b"connection").lower()
    tokens = {t.strip() for t in conn.split(b",")}
    closes = b"close" in tokens or (minor == b"0" and b"keep-alive" not in tokens)
    if b"upgrade" in tokens and any(n == b"upgrade" for n, _ in fields):
        closes = True  # the router reads nothing after an upgrade request
    if te and cl:
        raise _Malformed("Transfer-Encoding and Content-Length")
    if te:
        if len(te) > 1 or te[0].lower() != b"chunked" or minor == b"0":
            raise _Malformed("Transfer-Encoding")
        body, pos = _chunked(data, pos)
    elif cl:
        if len(cl) > 1 or not cl[0].isdigit() or int(cl[0]) > MAX_LENGTH:
            raise _Malformed("Content-Length")
        n = int(cl[0])
        if len(data) < pos + n:
            raise _Incomplete
        body, pos = data[pos : pos + n], pos + n
    else:
        body = b""
    return method.decode(), target.decode("latin-1"), body, pos, closes


def _chunked(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        end = _line_end(data, pos)
        m = CHUNK_LINE.fullmatch(data, pos, end + 2)
        if m is None:
            raise _Malformed("chunk size line")
        size = int(m.group(1), 16)
        if size >= 1 << 64:
            raise _Malformed("chunk size overflow")
        pos = end + 2
        if size == 0:
            break
        if len(data) < pos + size + 2:
            if data[pos + size : pos + size + 2] not in (b"", b"\r"):
                raise _Malformed("no CRLF after chunk data")
            raise _Incomplete
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise _Malformed("no CRLF after chunk data")
        body += data[pos : pos + size]
        pos += size + 2
    while True:  # trailer fields
        end = _line_end(data, pos)
        if end == pos:
            return bytes(body), pos + 2
        if FIELD.fullmatch(data, pos, end + 2) is None:
            raise _Malformed("trailer field")
        pos = end + 2
