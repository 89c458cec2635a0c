"""Slow and abusive clients against the real router (a subprocess) and a real backend on
127.0.0.1: slowloris, slow POST, slow read, the connection limit and the descriptor
budget (issue 6). Timeouts are configured short and every wait polls for a condition
with a deadline; no duration is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))

from router_harness import (
    Router,
    instance,
    read_response,
    router_factory,
    table,
    version,
    wait_for,
)

from skewless.router import cli as router_cli
from skewless.router.limits import SHED_MAX, connection_budget

__all__ = ["router_factory"]

CHUNK = b"x" * 65536


class _Conn(asyncio.Protocol):
    """One backend connection: records heads, complete requests and closes."""

    def __init__(self, backend: SlowBackend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.left = 0
        self.paused = False
        self.record: dict[str, Any] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.record["closed"] = True
        self.left = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.record = {"path": self.url.decode(), "complete": False, "closed": False, "body": 0}
        self.url = b""
        if not self.record["path"].startswith("/healthz"):
            self.backend.seen.append(self.record)

    def on_body(self, body: bytes) -> None:
        self.record["body"] += len(body)

    def on_message_complete(self) -> None:
        self.record["complete"] = True
        path = self.record["path"]
        if path.startswith("/big"):
            self.left = int(path.partition("n=")[2])
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.left)
            self.pump()
        else:
            body = b"%d" % self.record["body"]
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    def pump(self) -> None:
        # flow-controlled like a real server: the backend holds no more than its buffer
        while self.left and not self.paused:
            part = CHUNK[: min(self.left, len(CHUNK))]
            self.left -= len(part)
            self.transport.write(part)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()


class SlowBackend:
    """An HTTP/1.1 server in a thread: ``/big?n=N`` (N bytes), anything else answers the
    length of the body it read. ``seen`` holds one record per request head."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                self.loop.create_server(lambda: _Conn(self), sock=sock)
            )
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def stop(self) -> None:
        def shutdown() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def backend() -> Iterator[SlowBackend]:
    b = SlowBackend()
    try:
        yield b
    finally:
        b.stop()


def start(router_factory: Callable[..., Router], b: SlowBackend, *args: str) -> Router:
    return router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]), *args)


def metric(r: Router, name: str, labels: str = "") -> float:
    text = httpx.get(f"{r.admin}/metrics", timeout=5).text
    m = re.search(rf"^{name}\{{{labels}[^}}]*\}} (\S+)$", text, re.M)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


def closed_by_peer(s: socket.socket) -> bool:
    """True once the peer closed (EOF or reset); reads and drops what is pending."""
    s.settimeout(0.05)
    try:
        while True:
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def recv_until(s: socket.socket, marker: bytes, tick: Callable[[], None]) -> bytes:
    """Read until ``marker``; call ``tick`` whenever nothing came for a moment."""
    s.settimeout(0.1)
    out = b""
    deadline = time.monotonic() + 30
    while marker not in out:
        assert time.monotonic() < deadline, f"no {marker!r} from the router: {out!r}"
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            with contextlib.suppress(OSError):
                tick()
            continue
        if not chunk:
            break
        out += chunk
    return out


def rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def normal_get(r: Router) -> int:
    return httpx.get(f"{r.url}/ok", timeout=5).status_code


# ---- slowloris ---------------------------------------------------------------------


def test_slowloris_gets_408_and_is_closed(backend: SlowBackend, router_factory: Any) -> None:
    r = start(router_factory, backend, "--header-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        out = recv_until(s, b"\r\n\r\n", lambda: s.sendall(b"X-Slow: 1\r\n"))
        assert out.startswith(b"HTTP/1.1 408 ")
        assert b"Connection: close" in out
        wait_for(lambda: closed_by_peer(s), 10, "the router to close the slowloris")
    assert backend.seen == []
    assert metric(r, "skewless_timeouts_total", 'kind="header"') == 1
    assert normal_get(r) == 200


def test_connection_that_sends_nothing_is_closed(backend: SlowBackend, router_factory: Any) -> None:
    # a fresh connection's first request is due within the header timeout, not the
    # (longer) keep-alive timeout
    r = start(router_factory, backend, "--header-timeout", "0.5", "--keepalive-timeout", "300")
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        wait_for(lambda: closed_by_peer(s), 10, "the router to close a silent connection")
    assert metric(r, "skewless_timeouts_total", 'kind="idle"') >= 1
    assert metric(r, "skewless_timeouts_total", 'kind="header"') == 0


# ---- slow POST ---------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_slow_post_gets_408_and_the_backend_never_sees_a_complete_request(
    backend: SlowBackend, router_factory: Any, framing: str
) -> None:
    # at least 500 bytes per 0.5 s window; the client trickles one byte a tick
    r = start(router_factory, backend, "--body-timeout", "0.5", "--body-min-rate", "1000")
    if framing == "chunked":
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        first, drip = b"5\r\nhello\r\n", b"1\r\nx\r\n"
    else:
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        first, drip = b"hello", b"x"
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(head + first)
        out = recv_until(s, b"\r\n\r\n", lambda: s.sendall(drip))
        assert out.startswith(b"HTTP/1.1 408 "), out
        assert b"Connection: close" in out
        wait_for(lambda: closed_by_peer(s), 10, "the router to close the slow POST")
    uploads = wait_for(lambda: [q for q in backend.seen if q["path"] == "/upload"], 5, "head")
    assert len(uploads) == 1
    # the instance's connection was closed under the request: aborted, never complete
    wait_for(lambda: uploads[0]["closed"], 10, "the backend connection to be closed")
    assert uploads[0]["complete"] is False
    assert metric(r, "skewless_timeouts_total", 'kind="body"') == 1
    # a normal upload on the same router is not affected
    body = b"y" * 1_000_000
    reply = httpx.post(f"{r.url}/upload", content=body, timeout=10)
    assert reply.status_code == 200 and reply.text == str(len(body))


# ---- slow read ---------------------------------------------------------------------


def test_slow_reader_is_closed_after_the_send_timeout_with_bounded_memory(
    backend: SlowBackend, router_factory: Any
) -> None:
    r = start(router_factory, backend, "--send-timeout", "1")
    assert normal_get(r) == 200
    before = rss(r.proc.pid)
    n = 64 * 1024 * 1024
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
    try:
        s.connect(("127.0.0.1", r.port))
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        wait_for(lambda: metric(r, "skewless_client_send_blocked") == 1, 20, "backpressure")
        buffered = metric(r, "skewless_client_buffered_bytes")
        grown = rss(r.proc.pid) - before
        assert buffered <= 1024 * 1024, buffered
        assert grown < 24 * 1024 * 1024, grown  # the 64 MiB response is not buffered
        wait_for(
            lambda: metric(r, "skewless_timeouts_total", 'kind="send"') == 1,
            20,
            "the send timeout",
        )
        big = [q for q in backend.seen if q["path"].startswith("/big")]
        wait_for(lambda: big[0]["closed"], 10, "the instance connection to be closed")
        got = 0
        s.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        assert got < n  # cut, not completed
    finally:
        s.close()
    assert metric(r, "skewless_client_connections") == 0
    assert normal_get(r) == 200


def router_send_queue(router_port: int, client_port: int) -> int:
    """Bytes the kernel holds for a client on the router's side (``ss`` Send-Q)."""
    out = subprocess.run(
        [
            "ss",
            "-tnH",
            "state",
            "established",
            f"( sport = :{router_port} and dport = :{client_port} )",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out, "the router's side of the connection is not in ss"
    return int(out[1])


def wmem_max() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


@pytest.mark.parametrize("lowat", [65536, 0])
def test_kernel_queues_little_for_a_client_that_does_not_read(
    backend: SlowBackend, router_factory: Any, lowat: int
) -> None:
    # Without TCP_NOTSENT_LOWAT the kernel autotunes a loopback connection's send buffer
    # to megabytes and takes them from the router whether or not the client reads: the
    # bytes a thousand slow readers made the router pull from the instance.
    if lowat == 0 and wmem_max() <= 1 << 20:
        pytest.skip("tcp_wmem max <= 1 MiB: the kernel default queues little anyway")
    r = start(router_factory, backend, "--send-lowat", str(lowat), "--send-timeout", "300")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
    try:
        s.connect(("127.0.0.1", r.port))
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (64 << 20))
        wait_for(lambda: metric(r, "skewless_client_send_blocked") == 1, 20, "backpressure")
        queued = router_send_queue(r.port, s.getsockname()[1])
        if lowat:
            assert queued < 512 * 1024, queued
        else:
            assert queued > 512 * 1024, queued  # the control: what the option saves
    finally:
        s.close()


def test_a_client_reading_at_full_speed_gets_a_64_mib_response_whole(
    backend: SlowBackend, router_factory: Any
) -> None:
    r = start(router_factory, backend)  # default --send-lowat
    n = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", r.port), timeout=30) as s:
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n)
        data = bytearray()
        while chunk := s.recv(1 << 20):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"content-length: %d" % n in head.lower(), head
    assert len(body) == n and body.count(b"x") == n


@pytest.mark.parametrize("value", ["100", "-1", str(128 << 20)])
def test_send_lowat_out_of_range_is_refused(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text("{}")
    assert router_cli.main(["--routes", str(routes), "--send-lowat", value]) == 2
    err = capsys.readouterr().err
    assert "--send-lowat" in err and "4096" in err, err


def test_closing_connections_to_clients_not_reading_are_released(
    backend: SlowBackend, router_factory: Any
) -> None:
    # Responses then close: the router's close waits for its write buffer to drain,
    # which a client that reads nothing never lets happen. Whatever the kernel takes,
    # some of these sizes leave the router holding less than its high-water mark.
    r = start(router_factory, backend, "--send-timeout", "1")
    sizes = range(1 << 20, 6 << 20, 128 << 10)
    readers = []
    try:
        for n in sizes:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", r.port))
            s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n)
            readers.append(s)
        wait_for(lambda: len(backend.seen) == len(sizes), 20, "every request")
        wait_for(
            lambda: metric(r, "skewless_client_connections") == 0, 30, "every connection released"
        )
    finally:
        for s in readers:
            s.close()
    assert normal_get(r) == 200


def test_clients_not_reading_share_a_bounded_buffer(
    backend: SlowBackend, router_factory: Any
) -> None:
    limit = 1024 * 1024
    r = start(router_factory, backend, "--send-buffer-limit", str(limit), "--send-timeout", "300")
    n = 16 * 1024 * 1024
    readers = []
    try:
        for _ in range(8):  # each holds more than 256 KiB once it blocks: 8 pass the limit
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", r.port))
            s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            readers.append(s)

        def settled() -> bool:  # every reader blocked or cut, and the sweep has run since
            # (with --send-lowat all eight block at once, before the next sweep tick)
            blocked = metric(r, "skewless_client_send_blocked")
            cut = metric(r, "skewless_timeouts_total", 'kind="buffer"')
            within = metric(r, "skewless_client_buffered_bytes") <= limit
            return blocked + cut == 8 and within

        wait_for(settled, 20, "all readers blocked or cut, within the budget")
        assert metric(r, "skewless_timeouts_total", 'kind="buffer"') >= 1
        assert metric(r, "skewless_timeouts_total", 'kind="send"') == 0
        cut = int(metric(r, "skewless_timeouts_total", 'kind="buffer"'))
        wait_for(
            lambda: sum(q["closed"] for q in backend.seen if q["path"].startswith("/big")) >= cut,
            10,
            "the cut clients' instance connections to be closed",
        )
    finally:
        for s in readers:
            s.close()
    assert normal_get(r) == 200


# ---- connection limit and descriptors ----------------------------------------------


def test_connections_over_the_limit_are_shed_with_503(
    backend: SlowBackend, router_factory: Any
) -> None:
    limit, extra = 20, 5
    r = start(router_factory, backend, "--max-connections", str(limit))
    held: list[socket.socket] = []
    try:
        for _ in range(limit):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
            held.append(s)
            s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s)[0] == 200
        for _ in range(extra):
            with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
                s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                status, headers, _ = read_response(s)
                assert status == 503 and headers["retry-after"] == "1"
                assert headers["connection"] == "close"
                wait_for(lambda s=s: closed_by_peer(s), 10, "the shed connection to close")
        assert metric(r, "skewless_shed_connections_total") == extra
        assert len([q for q in backend.seen if q["path"] == "/ok"]) == limit
        # held connections keep working
        held[0].sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(held[0])[0] == 200
        for s in held[:5]:
            s.close()
        del held[:5]

        def new_connection_served() -> bool:
            with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
                s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return read_response(s)[0] == 200

        wait_for(new_connection_served, 10, "a new connection below the limit")
    finally:
        for s in held:
            s.close()


def test_descriptors_stay_bounded_under_a_burst(backend: SlowBackend, router_factory: Any) -> None:
    limit, burst = 50, 1000
    r = start(router_factory, backend, "--max-connections", str(limit))
    assert normal_get(r) == 200
    pid = r.proc.pid
    base = fds(pid)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak[0] = max(peak[0], fds(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    held: list[socket.socket] = []
    try:
        for _ in range(burst):  # all held open at once, none sends a byte
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", r.port), timeout=5))
        # lingering shed connections are reset after a moment: back to the limit
        wait_for(lambda: fds(pid) <= base + limit + 5, 20, "shed connections to be released")
        assert normal_get(r) in (200, 503)  # the router answers, whatever its load
    finally:
        for s in held:
            s.close()
        stop.set()
        sampler.join(5)
    wait_for(lambda: fds(pid) <= base + 2, 20, "descriptors back to the baseline")
    assert peak[0] <= base + limit + SHED_MAX + 10, (peak[0], base)
    assert metric(r, "skewless_shed_connections_total") >= burst - limit
    assert normal_get(r) == 200


def test_connection_budget_leaves_descriptors_for_upstreams() -> None:
    assert connection_budget(10_000, 1 << 20) == 10_000
    # 1024 descriptors: the reserve and the shed connections first, then two per client
    assert connection_budget(10_000, 1024) == (1024 - 256 - SHED_MAX) // 2
    assert connection_budget(10_000, 100) == 1
