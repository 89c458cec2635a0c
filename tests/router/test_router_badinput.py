"""Bad input: refused with the exact status, the connection closed, nothing forwarded."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from router_harness import instance, raw_exchange, table, version

BAD_400 = {
    "malformed request line": b"GET\r\nHost: x\r\n\r\n",
    "junk bytes": b"\x00\x01\x02 junk\r\n\r\n",
    "bad protocol": b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n",
    "relative target": b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/2.0 in text": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    "missing host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "control char in value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "CL and TE": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing duplicate CL": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "CL list": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
    "TE gzip": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "TE chunked then gzip": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "TE gzip then chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"0\r\n\r\n",
    "TE twice": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "plus sign in CL": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    "minus sign in CL": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\nabc",
    "junk in CL": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
    "hex CL": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc",
    "sign in chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"+3\r\nabc\r\n0\r\n\r\n",
    "junk in chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3 zz\r\nabc\r\n0\r\n\r\n",
    "0x chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x3\r\nabc\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "whitespace before colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: x\n\n",
}


@pytest.fixture
def setup(backend_factory: Any, router_factory: Any) -> tuple[Any, Any]:
    b = backend_factory("v1")
    r = router_factory(
        table([version("v1", 1.0, [instance("i0", b.address)])]),
        "--header-timeout",
        "0.5",
        "--max-header-size",
        "4096",
    )
    return b, r


def test_ambiguous_or_malformed_requests_are_400_closed_never_forwarded(
    setup: tuple[Any, Any],
) -> None:
    b, r = setup
    for name, data in BAD_400.items():
        out = raw_exchange(r.port, data)
        assert out.startswith(b"HTTP/1.1 400 "), (name, out[:80])
        assert b"Connection: close" in out, name
    assert b.app_requests() == [] and [h for h in b.heads if h[1] != "/healthz"] == []
    # a smuggling attempt behind a good request: the good one is answered, nothing else
    out = raw_exchange(
        r.port,
        b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200") and b"400" in out
    assert [q["path"] for q in b.app_requests()] == ["/ok"]


def test_headers_over_the_limit_are_431(setup: tuple[Any, Any]) -> None:
    b, r = setup
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    assert raw_exchange(r.port, big).startswith(b"HTTP/1.1 431 ")
    many = (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
        + b"\r\n"
    )
    assert raw_exchange(r.port, many).startswith(b"HTTP/1.1 431 ")
    # a head that never ends is refused once it passes the limit, without waiting
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        s.sendall(b"b" * 6000)
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    assert b.app_requests() == []


def test_slow_headers_get_408(setup: tuple[Any, Any]) -> None:
    b, r = setup
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(0.1)
        deadline = time.monotonic() + 10
        out = b""
        while not out and time.monotonic() < deadline:
            try:
                out = s.recv(4096)
            except TimeoutError:
                s.sendall(b"X-Slow: 1\r\n")  # keep dribbling, never finishing the head
    assert out.startswith(b"HTTP/1.1 408 ")
    assert b.app_requests() == []


def test_connect_method_is_refused(setup: tuple[Any, Any]) -> None:
    _, r = setup
    out = raw_exchange(r.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 ")
