"""Real parts for the smuggling and framing suite: a counting backend that records every
byte it receives, per connection, and a ``skewless router`` subprocess in front of it.

The backend parses with httptools (llhttp, strict) and counts complete requests; it also
keeps the raw bytes of every connection, so a test can assert that a smuggled request
never reached it in any form (not even as bytes it would parse differently).

Backend paths (anything else: 200 ``ok``, keep-alive):
  /early          answers 200 at once, when the head arrives, without reading the body
  /reject-expect  answers 417 at once to a head with ``Expect: 100-continue``
  /script/NAME    writes ``backend.scripts[NAME]`` (raw bytes: a response, bad or not)
  /upgrade200     answers 200 (not 101) to an Upgrade request, keeping the connection
  /hold...        answered only when the test calls ``backend.release()``
An ``Expect: 100-continue`` head on other paths gets ``100 Continue`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))

from router_harness import Router, instance, table, version

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
"""The request an attacker hides; the backend must never see the word ``smuggled``."""


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Request:
    conn: int
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class ConnRecord:
    raw: bytearray = field(default_factory=bytearray)
    closed: bool = False
    closed_by_peer: bool = False


class _Conn(asyncio.Protocol):
    def __init__(self, backend: CountingBackend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.cid = 0
        self.answered = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        b = self.backend
        b.next_id += 1
        self.cid = b.next_id
        b.conns[self.cid] = ConnRecord()
        b.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        rec = self.backend.conns.get(self.cid)
        if rec is not None:
            rec.closed = True
        self.backend.transports.discard(self.transport)

    def eof_received(self) -> bool | None:
        rec = self.backend.conns.get(self.cid)
        if rec is not None:
            rec.closed_by_peer = True
        return None

    def data_received(self, data: bytes) -> None:
        rec = self.backend.conns.setdefault(self.cid, ConnRecord())
        rec.raw.extend(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as error:
            # the router sent bytes a strict parser refuses: a discrepancy in itself
            self.backend.parse_errors += 1
            self.backend.parse_error_details.append((str(error), bytes(rec.raw[-300:])))
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()
        self.answered = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        path = self.url.decode("latin-1")
        self.backend.heads.append(path)
        expect = any(
            n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in self.headers
        )
        if path == "/early":
            self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        elif path == "/reject-expect" and expect:
            self.answer(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        elif expect:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        b = self.backend
        path = self.url.decode("latin-1")
        b.requests.append(
            Request(
                conn=self.cid,
                method=self.parser.get_method().decode(),
                path=path,
                headers=self.headers,
                body=bytes(self.body),
            )
        )
        if self.answered:
            return
        if path.startswith("/script/"):
            self.answer(b.scripts[path[len("/script/") :]])
        elif path.startswith("/hold"):
            b.held.append(self)  # answered when the test calls ``backend.release()``
        elif path == "/upgrade200":
            self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        else:
            body = b"ok %d" % len(self.body)
            self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def answer(self, data: bytes) -> None:
        self.answered = True
        if not self.transport.is_closing():
            self.transport.write(data)


class CountingBackend:
    """An HTTP/1.1 origin on 127.0.0.1 in its own thread; counts what reaches it."""

    def __init__(self) -> None:
        self.scripts: dict[str, bytes] = {}
        self.held: list[_Conn] = []
        self.requests: list[Request] = []
        self.heads: list[str] = []
        self.conns: dict[int, ConnRecord] = {}
        self.parse_errors = 0
        self.parse_error_details: list[tuple[str, bytes]] = []
        self.next_id = 0
        self.transports: set[Any] = set()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                self.server = await self.loop.create_server(lambda: _Conn(self), sock=sock)
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5), "backend did not start"

    def release(self) -> None:
        """Answer the oldest request held by a ``/hold`` path."""

        def answer() -> None:
            conn = self.held.pop(0)
            conn.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld")

        self.loop.call_soon_threadsafe(answer)

    def reset(self) -> None:
        """Forget what was seen (connections the router keeps stay open)."""
        self.requests.clear()
        self.heads.clear()
        self.parse_errors = 0
        self.parse_error_details.clear()
        for rec in self.conns.values():
            rec.raw.clear()

    def app_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path != "/barrier"]

    def raw_all(self) -> bytes:
        return b"".join(bytes(c.raw) for c in list(self.conns.values()))

    def stop(self) -> None:
        def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            for t in list(self.transports):
                t.abort()
            self.loop.stop()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(shutdown)
            self.thread.join(5)
        self.loop.close()


@dataclass
class Stack:
    backend: CountingBackend
    router: Router

    @property
    def port(self) -> int:
        return self.router.port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend = CountingBackend()
    router: Router | None = None
    try:
        # one instance, health checks effectively off (the first one after an hour)
        routes = table([version("v1", 1.0, [instance("i0", backend.address)], interval=3600)])
        router = Router(
            tmp_path_factory.mktemp("router"),
            routes,
            ["--header-timeout", "5", "--max-header-size", "8192", "--log-level", "warning"],
        )
        yield Stack(backend, router)
    finally:
        if router is not None:
            router.stop()
        backend.stop()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The module's stack with the backend's records reset and the router checked alive."""
    assert stack.router.proc.poll() is None, "router died:\n" + stack.router.log()
    stack.backend.reset()
    return stack


# ---- raw client helpers ------------------------------------------------------------


def parse_responses(data: bytes) -> tuple[list[int], int]:
    """Status codes of the final responses in ``data``, read one after the other by their
    Content-Length (every response of the router and this backend has one), and how
    many of them are whole. Interim (1xx) responses are skipped."""
    codes: list[int] = []
    whole = pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0 or not data.startswith(b"HTTP/1.1 ", pos):
            return codes, whole
        code = int(data[pos + 9 : pos + 12])
        length = 0
        for line in data[pos:end].lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:].strip())
        pos = end + 4
        if code < 200:
            continue
        codes.append(code)
        if len(data) < pos + length:
            return codes, whole
        whole += 1
        pos += length


def complete_responses(data: bytes) -> int:
    return parse_responses(data)[1]


def statuses(data: bytes) -> list[int]:
    return parse_responses(data)[0]


def exchange(
    port: int, data: bytes | list[bytes], timeout: float = 5.0, responses: int = 0
) -> tuple[bytes, bool]:
    """Send ``data`` (a list: one write each), read until the router closes, ``timeout``,
    or (if ``responses``) that many whole responses came back.

    Returns what came back and whether the router closed the connection.
    """
    parts = [data] if isinstance(data, bytes) else data
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in parts:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(part)
        out = b""
        closed = False
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                out += chunk
                if responses and complete_responses(out) >= responses:
                    break
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
        return out, closed


def barrier(stack: Stack) -> None:
    """A good request on a new connection, answered: the router has forwarded whatever
    it was going to forward before it (the backend handles both in one loop)."""
    out, _ = exchange(stack.port, b"GET /barrier HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(out)[:1] == [200], out
    wait_for(lambda: any(r.path == "/barrier" for r in stack.backend.requests), 5, "barrier")


def assert_refused(
    stack: Stack, data: bytes | list[bytes], codes: tuple[int, ...] = (400,)
) -> bytes:
    """The router answers one of ``codes`` and closes; nothing reaches the backend."""
    out, closed = exchange(stack.port, data)
    got = statuses(out)
    assert got and got[-1] in codes, f"expected {codes}, got {out[:200]!r}"
    assert got == [got[-1]], f"more than one response: {out[:300]!r}"
    assert b"Connection: close" in out and closed, f"not closed: {out[:200]!r}"
    barrier(stack)
    assert stack.backend.app_requests() == [], [r.path for r in stack.backend.app_requests()]
    assert stack.backend.heads == ["/barrier"], stack.backend.heads
    assert b"smuggled" not in stack.backend.raw_all()
    return out


def assert_forwarded_once(stack: Stack, data: bytes | list[bytes], body: bytes = b"") -> Request:
    """The router forwards exactly one request, with exactly ``body``; the rest of the
    bytes (a smuggling attempt) is never parsed as a request."""
    out, _ = exchange(stack.port, data, responses=1)
    got = statuses(out)
    assert got and got[0] == 200, out[:300]
    assert all(code < 500 for code in got), out[:300]
    barrier(stack)
    reqs = stack.backend.app_requests()
    assert len(reqs) == 1, [r.path for r in reqs]
    assert reqs[0].body == body, reqs[0].body
    assert b"smuggled" not in stack.backend.raw_all()
    return reqs[0]
