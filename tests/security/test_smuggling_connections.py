"""Desync across a connection's life: upgrades, early answers, 100-continue, pipelining
behind bad input, and bad framing in *responses* (the instance is trusted only so far:
a response we cannot frame is a 502 and its connection is never reused)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import contextlib

from smuggling_harness import (
    SMUGGLED,
    Stack,
    barrier,
    exchange,
    fresh,
    stack,
    statuses,
    wait_for,
)

__all__ = ["fresh", "stack"]


def recv_until(s: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while marker not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        pass
    return out


def conn_of(stack: Stack, path: str) -> int:
    """The backend connection that received the head of ``path``."""
    for cid, rec in list(stack.backend.conns.items()):
        if f" {path} HTTP/1.1".encode() in rec.raw:
            return cid
    raise AssertionError(f"{path} never reached the backend")


# ---- upgrades ------------------------------------------------------------------------


def test_h2c_upgrade_is_stripped_and_never_tunnelled(fresh: Stack) -> None:
    data = (
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED
    )
    out, closed = exchange(fresh.port, data)
    assert statuses(out) == [200] and closed
    barrier(fresh)
    reqs = fresh.backend.app_requests()
    assert [r.path for r in reqs] == ["/h2c"]
    names = {n.lower() for n, _ in reqs[0].headers}
    assert not names & {b"upgrade", b"http2-settings", b"connection"}, names
    raw = fresh.backend.raw_all()
    assert b"smuggled" not in raw and b"PRI * HTTP/2.0" not in raw


def test_a_101_the_router_did_not_ask_for_is_a_502_never_a_tunnel(fresh: Stack) -> None:
    fresh.backend.scripts["h2c101"] = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    data = b"GET /script/h2c101 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.sendall(data)
        out = recv_until(s, b"\r\n\r\n")
        assert statuses(out) == [502], out
        with contextlib.suppress(OSError):
            s.sendall(SMUGGLED)  # would be the first tunnel bytes
    barrier(fresh)
    assert b"smuggled" not in fresh.backend.raw_all()
    wait_for(lambda: fresh.backend.conns[conn_of(fresh, "/script/h2c101")].closed, 5, "close")


@pytest.mark.parametrize("split", [False, True])
def test_a_200_answer_to_an_upgrade_never_opens_a_tunnel(fresh: Stack, split: bool) -> None:
    head = (
        b"GET /upgrade200 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        if split:
            s.sendall(head)
            out = recv_until(s, b"\r\n\r\n")
            with contextlib.suppress(OSError):  # the client acts as if upgraded anyway
                s.sendall(SMUGGLED)
        else:
            s.sendall(head + SMUGGLED)
            out = recv_until(s, b"\r\n\r\n")
        out += recv_until(s, b"never")  # the router closes
    assert statuses(out) == [200] and b"Connection: close" in out
    barrier(fresh)
    assert [r.path for r in fresh.backend.app_requests()] == ["/upgrade200"]
    assert b"smuggled" not in fresh.backend.raw_all()


# ---- bodies the instance did not read ------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_unread_body_never_poisons_a_reused_upstream_connection(
    fresh: Stack, framing: str
) -> None:
    """The instance answers before the body is in; the rest of the body (a request, to
    a naive reader) must never be written to a connection another request will use."""
    rest = SMUGGLED + b"x" * 20
    if framing == "length":
        head = b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 + len(rest))
        first, second = head + b"0123456789", rest
    else:
        head = b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        first, second = head + b"a\r\n0123456789\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest)
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.sendall(first)
        out = recv_until(s, b"early")
        assert statuses(out) == [200], out
        try:
            s.sendall(second)
            s.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass
        out += recv_until(s, b"never")
    assert b"Connection: close" in out  # we could not skip the body: the client goes
    cid = conn_of(fresh, "/early")
    wait_for(lambda: fresh.backend.conns[cid].closed, 5, "the upstream connection closed")
    # later requests use other connections and are framed as sent
    out, _ = exchange(fresh.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n", responses=1)
    assert statuses(out) == [200]
    assert conn_of(fresh, "/after") != cid
    assert "/smuggled" not in fresh.backend.heads and "/next" not in fresh.backend.heads
    assert b"smuggled" not in bytes(fresh.backend.conns[cid].raw)


def test_expect_100_continue_is_relayed_and_the_body_follows(fresh: Stack) -> None:
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.sendall(
            b"POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        out = recv_until(s, b"\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 100 "), out
        s.sendall(b"hello")
        out = recv_until(s, b"ok 5")
    assert statuses(out)[-1] == 200
    reqs = fresh.backend.app_requests()
    assert [(r.path, r.body) for r in reqs] == [("/expect", b"hello")]


def test_expect_refused_by_the_instance_then_body_sent_anyway_is_not_a_request(
    fresh: Stack,
) -> None:
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.sendall(
            b"POST /reject-expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
        )
        out = recv_until(s, b"\r\n\r\n")
        assert statuses(out) == [417], out
        with contextlib.suppress(OSError):
            s.sendall(SMUGGLED)
        out += recv_until(s, b"never")
    barrier(fresh)
    assert "/smuggled" not in fresh.backend.heads
    cid = conn_of(fresh, "/reject-expect")
    wait_for(lambda: fresh.backend.conns[cid].closed, 5, "the upstream connection closed")


# ---- pipelining behind bad input -----------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /bad HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_request_pipelined_behind_a_bad_one_is_never_forwarded(fresh: Stack, bad: bytes) -> None:
    out, closed = exchange(fresh.port, bad + SMUGGLED + b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(out) == [400] and closed
    barrier(fresh)
    assert fresh.backend.app_requests() == []
    assert not {"/smuggled", "/third"} & set(fresh.backend.heads)


@pytest.mark.parametrize(
    "bad_body",
    [b"zz\r\n", b"3\r\nabcXX\r\n", SMUGGLED, b"3\r\nabc\r\n0\r\nX : y\r\n\r\n"],
)
def test_a_good_request_then_one_whose_body_is_bad_in_the_same_read(
    fresh: Stack, bad_body: bytes
) -> None:
    """Found by the fuzzer: the good request is answered, the second (queued behind it,
    head complete, body bad) is refused with 400 and never started upstream."""
    data = (
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + bad_body
    )
    out, closed = exchange(fresh.port, data)
    assert statuses(out) == [200, 400] and closed, out
    barrier(fresh)
    assert [r.path for r in fresh.backend.app_requests()] == ["/first"]
    assert "/second" not in fresh.backend.heads


def test_bytes_after_a_deferred_refusal_do_not_turn_it_into_a_500(fresh: Stack) -> None:
    """Found by atheris: a refusal waits for the requests queued before it; when the queue
    drained, reading resumed and the parser repeated its error on the next bytes, which
    the router took for a bug of its own (500)."""
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.sendall(
            b"GET /hold0 HTTP/1.1\r\nHost: x\r\n\r\nGET /hold1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b'PUT /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chu"ked\r\n\r\n'
        )
        wait_for(lambda: "/hold0" in fresh.backend.heads, 5, "the first request forwarded")
        fresh.backend.release()
        wait_for(lambda: "/hold1" in fresh.backend.heads, 5, "the second request forwarded")
        s.sendall(b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED)
        fresh.backend.release()
        out = recv_until(s, b"never")
    assert statuses(out) == [200, 200, 400], out
    barrier(fresh)
    assert [r.path for r in fresh.backend.app_requests()] == ["/hold0", "/hold1"]
    assert b"smuggled" not in fresh.backend.raw_all()


def test_a_body_that_turns_bad_midway_never_completes_upstream(fresh: Stack) -> None:
    """The head already went to the instance: the router must cut that connection so the
    instance never sees a complete request, nor what follows it."""
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
        s.sendall(b"POST /midway HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"3\r\nabc\r\n")
        wait_for(lambda: b"abc" in fresh.backend.raw_all(), 5, "the first chunk forwarded")
        s.sendall(b"3\r\nabcXX\r\n0\r\n\r\n" + SMUGGLED)
        out = recv_until(s, b"never")
    assert statuses(out) == [400]
    cid = conn_of(fresh, "/midway")
    wait_for(lambda: fresh.backend.conns[cid].closed, 5, "the upstream connection closed")
    barrier(fresh)
    assert fresh.backend.app_requests() == []
    assert b"smuggled" not in fresh.backend.raw_all()


# ---- bad framing in responses --------------------------------------------------------

BAD_RESPONSES = {
    "TE gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "TE gzip, chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "TE chunked, gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    "TE chunked, chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "TE twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "TE xchunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nabc",
    "TE and CL": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "TE ws before colon": b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "differing CLs": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "CL list": b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
    "CL plus": b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
    "CL minus": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc",
    "CL junk": b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
    "CL overflow": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
    "chunk size junk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size sign": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10000000000000000\r\nabc\r\n0\r\n\r\n",
    "junk after chunk data": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcXX\r\n0\r\n\r\n",
    "missing CRLF after chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "NUL in header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.0\r\n\r\n",
    "status overflow": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
def test_a_response_with_bad_framing_is_a_502_and_its_connection_discarded(
    fresh: Stack, name: str
) -> None:
    script = name.replace(" ", "_")
    fresh.backend.scripts[script] = BAD_RESPONSES[name]
    path = f"/script/{script}"
    out, closed = exchange(fresh.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert statuses(out) == [502], out[:300]
    assert closed and b"Connection: close" in out
    assert b"abc" not in out  # not a byte of the body it could not frame
    cid = conn_of(fresh, path)
    wait_for(lambda: fresh.backend.conns[cid].closed, 5, "the upstream connection closed")
    out, _ = exchange(fresh.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n", responses=1)
    assert statuses(out) == [200] and conn_of(fresh, "/after") != cid


def test_bytes_after_a_complete_response_discard_the_connection(fresh: Stack) -> None:
    """Response queue poisoning (Kettle 2022): an instance that sends more than it was
    asked for must not have the surplus read as the answer to the next request."""
    fresh.backend.scripts["surplus"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"
    )
    fresh.backend.scripts["partial"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n"
    )
    for script in ("surplus", "partial"):
        with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
            s.sendall(f"GET /script/{script} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            out = recv_until(s, b"\r\n\r\nok")
            assert statuses(out) == [200] and b"poisoned" not in out
            cid = conn_of(fresh, f"/script/{script}")
            for i in range(3):  # the next requests get their own answers, elsewhere
                s.sendall(b"GET /%s%d HTTP/1.1\r\nHost: x\r\n\r\n" % (script.encode(), i))
                out = recv_until(s, b"ok 0")
                assert b"poisoned" not in out and statuses(out) == [200], out
                assert conn_of(fresh, f"/{script}{i}") != cid
            wait_for(lambda c=cid: fresh.backend.conns[c].closed, 5, "surplus conn closed")
