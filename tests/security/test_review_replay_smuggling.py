"""The smuggling suite with the replay lanes armed (review of the merged router).

The replay lanes (``skewless.router.client.ClientProtocol.replay``,
``skewless.router.upstream``) reuse an earlier parse for a read byte-identical to one
already parsed. They were written beside the smuggling defences, not with them: every
outcome here must be the same as in ``test_smuggling_requests`` and
``test_smuggling_connections``, with the client memo and the instance memo armed first
(the same valid request twice, and once more to take the lane, on the same connection).
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from smuggling_harness import (
    SMUGGLED,
    Stack,
    barrier,
    fresh,
    stack,
    statuses,
    wait_for,
)
from test_smuggling_connections import BAD_RESPONSES, conn_of, recv_until
from test_smuggling_requests import FORWARDED, REFUSED

__all__ = ["fresh", "stack"]

WARM_ANSWER = b"ok 0"


def pin_cookie(s: socket.socket) -> bytes:
    """A first request on ``s`` that gets a pin: its ``Cookie`` line for the next ones
    (a browser sends it back, and only then is there nothing of ours to add)."""
    s.sendall(b"GET /pin HTTP/1.1\r\nHost: x\r\n\r\n")
    out = recv_until(s, b"\r\n\r\n" + WARM_ANSWER)
    m = re.search(rb"Set-Cookie: ([^;]+);", out)
    assert m, out
    return b"Cookie: " + m[1] + b"\r\n"


def warm_up(s: socket.socket, path: bytes = b"/warm", answer: bytes = WARM_ANSWER) -> bytes:
    """The same pinned request three times on ``s``, one read each, each answered before
    the next: the second arms both memos, the third takes both lanes. Returns the
    ``Cookie`` line it used."""
    cookie = pin_cookie(s)
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + cookie + b"\r\n"
    for _ in range(3):
        s.sendall(request)
        out = recv_until(s, b"\r\n\r\n" + answer)
        assert statuses(out) == [200], out
        assert b"Set-Cookie" not in out and b"Connection: close" not in out, out
    return cookie


@pytest.mark.parametrize("name", list(REFUSED))
def test_smuggling_vector_after_replayed_requests_is_refused(fresh: Stack, name: str) -> None:
    """Three identical requests (the last one replayed), then the vector on the same
    connection: three 200s, then 400 and close; the backend sees the three and nothing
    of the vector."""
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        warm_up(s)
        s.sendall(REFUSED[name])
        rest = recv_until(s, b"never")  # until the router closes
    got = statuses(rest)
    assert got == [400], rest[:300]
    assert b"Connection: close" in rest
    barrier(fresh)
    assert [r.path for r in fresh.backend.app_requests()] == ["/pin"] + ["/warm"] * 3
    assert b"smuggled" not in fresh.backend.raw_all()


@pytest.mark.parametrize("name", list(FORWARDED))
def test_unusual_but_valid_framing_after_replayed_requests_is_forwarded_once(
    fresh: Stack, name: str
) -> None:
    data, body = FORWARDED[name]
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        warm_up(s)
        s.sendall(data)
        out = recv_until(s, b"\r\n\r\nok %d" % len(body))
    assert statuses(out)[:1] == [200], out[:300]
    barrier(fresh)
    reqs = fresh.backend.app_requests()
    assert [r.path for r in reqs[:4]] == ["/pin"] + ["/warm"] * 3
    assert len(reqs) == 5 and reqs[4].body == body, [(r.path, r.body) for r in reqs]
    assert b"smuggled" not in fresh.backend.raw_all()


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
def test_bad_response_after_replayed_responses_is_a_502(fresh: Stack, name: str) -> None:
    """The instance memo armed by identical responses (and taken), then a response with
    bad framing on the same instance: still a 502, never a tunnel or a reused connection."""
    script = "review_" + name.replace(" ", "_")
    fresh.backend.scripts[script] = BAD_RESPONSES[name]
    path = f"/script/{script}"
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        warm_up(s)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        out = recv_until(s, b"never")
    assert statuses(out) == [502], out[:300]
    assert b"Connection: close" in out and b"abc" not in out
    cid = conn_of(fresh, path)
    wait_for(lambda: fresh.backend.conns[cid].closed, 5, "the upstream connection closed")


def test_surplus_bytes_after_replayed_responses_discard_the_connection(fresh: Stack) -> None:
    """Response queue poisoning with the instance memo armed by the same head: the read
    is longer than the memo's response, so it must be parsed and the surplus refused."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    fresh.backend.scripts["same"] = head + WARM_ANSWER
    fresh.backend.scripts["surplus_memo"] = (
        head + WARM_ANSWER + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"
    )
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        warm_up(s)
        s.sendall(b"GET /script/surplus_memo HTTP/1.1\r\nHost: x\r\n\r\n")
        out = recv_until(s, b"\r\n\r\n" + WARM_ANSWER)
        assert statuses(out) == [200] and b"poisoned" not in out, out
        cid = conn_of(fresh, "/script/surplus_memo")
        for i in range(3):
            s.sendall(b"GET /after%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            out = recv_until(s, WARM_ANSWER)
            assert b"poisoned" not in out and statuses(out) == [200], out
            assert conn_of(fresh, f"/after{i}") != cid
    wait_for(lambda: fresh.backend.conns[cid].closed, 5, "surplus conn closed")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_early_answer_through_the_replay_lane_still_says_close(
    fresh: Stack, framing: str
) -> None:
    """The instance answers before the request body is in, with a response whose head
    the instance memo holds (the same answer to two GETs before): the client must still
    be told ``Connection: close`` (we cannot skip the rest of its body), and the rest of
    the body must never reach a reused upstream connection."""
    rest = SMUGGLED + b"x" * 20
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # the same response head twice arms the instance memo
        cookie = warm_up(s, b"/early", b"early")
        if framing == "length":
            head = b"POST /early HTTP/1.1\r\nHost: x\r\n%bContent-Length: %d\r\n\r\n" % (
                cookie,
                10 + len(rest),
            )
            first, second = head + b"0123456789", rest
        else:
            head = b"POST /early HTTP/1.1\r\nHost: x\r\n%bTransfer-Encoding: chunked\r\n\r\n" % (
                cookie
            )
            first = head + b"a\r\n0123456789\r\n"
            second = b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest)
        s.sendall(first)
        out = recv_until(s, b"early")
        assert statuses(out) == [200], out
        try:
            s.sendall(second)
            s.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass
        out += recv_until(s, b"never")
    assert b"Connection: close" in out, out  # we could not skip the body: the client goes
    assert "/smuggled" not in fresh.backend.heads and "/next" not in fresh.backend.heads
    assert b"smuggled" not in fresh.backend.raw_all()


def warm_up_header_lane(s: socket.socket) -> list[str]:
    """Three pinned GETs with the same headers and a new path each, one read each: the
    second arms the header lane, the third takes it. Returns the paths sent."""
    cookie = pin_cookie(s)
    paths = ["/lane/1", "/lane/2?a=b%20c", "/lane/3;x=(y)"]
    for path in paths:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + cookie + b"\r\n")
        out = recv_until(s, b"\r\n\r\n" + WARM_ANSWER)
        assert statuses(out) == [200], out
    return paths


@pytest.mark.parametrize("name", list(REFUSED))
def test_smuggling_vector_after_the_header_lane_is_refused(fresh: Stack, name: str) -> None:
    """The header lane (same header block, a new request line) armed and taken, then the
    vector on the same connection: 400 and close, nothing of it reaches the backend."""
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        paths = warm_up_header_lane(s)
        s.sendall(REFUSED[name])
        rest = recv_until(s, b"never")
    assert statuses(rest) == [400], rest[:300]
    barrier(fresh)
    assert [r.path for r in fresh.backend.app_requests()] == ["/pin", *paths]
    assert b"smuggled" not in fresh.backend.raw_all()


@pytest.mark.parametrize("name", list(FORWARDED))
def test_valid_framing_after_the_header_lane_is_forwarded_once(fresh: Stack, name: str) -> None:
    data, body = FORWARDED[name]
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        paths = warm_up_header_lane(s)
        s.sendall(data)
        out = recv_until(s, b"\r\n\r\nok %d" % len(body))
    assert statuses(out)[:1] == [200], out[:300]
    barrier(fresh)
    reqs = fresh.backend.app_requests()
    assert [r.path for r in reqs[:4]] == ["/pin", *paths]
    assert len(reqs) == 5 and reqs[4].body == body, [(r.path, r.body) for r in reqs]
    assert b"smuggled" not in fresh.backend.raw_all()
