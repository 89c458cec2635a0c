"""The fault proxy itself, over real sockets: each mode does what it says, switches are
live (a pooled connection misbehaves from its next byte), and bad faults are refused."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from skewless.testing.faultproxy import Fault, ThreadedFaultProxy


class Backend:
    """A TCP server in a thread: ``SEND n`` answers n bytes, ``BYE`` answers and closes,
    anything else is echoed. Counts connections and received bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):
            while True:
                data = c.recv(65536)
                if not data:
                    return
                self.received += data
                if data.startswith(b"SEND "):
                    c.sendall(b"x" * int(data.split()[1]))
                elif data.startswith(b"BYE"):
                    c.sendall(b"bye")
                    return
                else:
                    c.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def proxy(backend: Backend) -> Iterator[ThreadedFaultProxy]:
    with ThreadedFaultProxy(backend.address) as p:
        yield p


def connect(proxy: ThreadedFaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return s


def read_all(s: socket.socket) -> tuple[bytes, str]:
    """Read until EOF or reset: (bytes, "eof" | "reset")."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out, "reset"
        if not chunk:
            return out, "eof"
        out += chunk


def quiet(s: socket.socket, seconds: float = 0.3) -> bool:
    """Nothing (not even EOF) arrives on ``s`` for a while."""
    readable, _, _ = select.select([s], [], [], seconds)
    return not readable


def test_pass_relays_both_ways(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    with connect(proxy) as s:
        s.sendall(b"hello")
        assert s.recv(100) == b"hello"
        s.sendall(b"SEND 200000")
        got = b""
        while len(got) < 200000:
            got += s.recv(65536)
        assert got == b"x" * 200000
    assert backend.connections == 1
    assert proxy.stats.bytes_down >= 200005


def test_latency_holds_each_chunk(proxy: ThreadedFaultProxy) -> None:
    proxy.set("latency", latency_ms=60_000)
    with connect(proxy) as s:
        s.sendall(b"hello")
        assert quiet(s)  # held back, not lost: the connection is still open
        assert proxy.open_connections == 1


def test_latency_on_connect_delays_the_upstream(
    proxy: ThreadedFaultProxy, backend: Backend
) -> None:
    proxy.set("latency", connect_ms=60_000)
    with connect(proxy) as s:
        s.sendall(b"hello")
        assert quiet(s)
        assert backend.connections == 0


def connect_and_read(port: int) -> tuple[bytes, str]:
    """Connect and read to the end; a reset may already fail the connect (the RST can
    beat the connect's completion check on loopback)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionResetError:
        return b"", "reset"
    with s:
        return read_all(s)


def test_reset_on_connect(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    proxy.set("reset")
    assert connect_and_read(proxy.port) == (b"", "reset")
    assert backend.connections == 0


def test_reset_after_n_response_bytes(proxy: ThreadedFaultProxy) -> None:
    proxy.set("reset", after=1000)
    with connect(proxy) as s:
        s.sendall(b"SEND 100000")
        data, how = read_all(s)
    assert how == "reset"
    assert len(data) <= 1000  # an RST may also discard what was in flight


def test_reset_after_n_request_bytes(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    proxy.set("reset", after=4, direction="up")
    with connect(proxy) as s:
        s.sendall(b"abcdefgh")
        assert read_all(s)[1] == "reset"
    assert b"efgh" not in backend.received


def test_switch_is_live_on_open_connections(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    with connect(proxy) as s:
        s.sendall(b"one")
        assert s.recv(10) == b"one"
        proxy.set("reset")
        s.sendall(b"two")
        assert read_all(s) == (b"", "reset")
    assert b"two" not in backend.received


def test_blackhole_never_answers(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    proxy.set("blackhole")
    with connect(proxy) as s:
        s.sendall(b"hello")
        assert quiet(s)
    assert backend.connections == 0


def test_blackhole_swallows_a_live_connection(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    with connect(proxy) as s:
        s.sendall(b"one")
        assert s.recv(10) == b"one"
        proxy.set("blackhole")
        s.sendall(b"two")
        assert quiet(s)


def test_slow_close_delays_the_fin(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    proxy.set("slow_close", close_ms=1500)
    with connect(proxy) as s:
        s.sendall(b"BYE")
        assert s.recv(10) == b"bye"
        deadline = time.monotonic() + 0.2
        # The upstream has closed; its FIN is held back for a while (not just lost).
        while time.monotonic() < deadline and backend.connections == 1:
            assert quiet(s, 0.05)
        assert read_all(s) == (b"", "eof")


def test_byte_limit_cuts_cleanly(proxy: ThreadedFaultProxy) -> None:
    proxy.set("byte_limit", after=1234)
    with connect(proxy) as s:
        s.sendall(b"SEND 100000")
        data, how = read_all(s)
    assert (len(data), how) == (1234, "eof")
    assert proxy.stats.cuts == 1


def test_refuse_stops_listening_and_comes_back(proxy: ThreadedFaultProxy, backend: Backend) -> None:
    live = connect(proxy)
    live.sendall(b"one")
    assert live.recv(10) == b"one"
    proxy.set("refuse")
    assert read_all(live)[1] == "reset"  # an instance that died takes its connections
    live.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
    proxy.set("pass")
    with connect(proxy) as s:
        s.sendall(b"back")
        assert s.recv(10) == b"back"


def test_upstream_down_resets_the_client() -> None:
    s0 = socket.socket()
    s0.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s0.getsockname()[1]}"
    s0.close()
    with ThreadedFaultProxy(dead) as p:
        assert connect_and_read(p.port) == (b"", "reset")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "explode"}, "fault.mode"),
        ({"mode": "byte_limit"}, "fault.after"),
        ({"mode": "reset", "after": -1}, "fault.after"),
        ({"mode": "latency", "latency_ms": -5}, "fault.latency_ms"),
        ({"mode": "reset", "direction": "sideways"}, "fault.direction"),
    ],
)
def test_bad_faults_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Fault(**kwargs)  # type: ignore[arg-type]


def test_bad_fault_changes_nothing(proxy: ThreadedFaultProxy) -> None:
    proxy.set("latency", latency_ms=5)
    with pytest.raises(ValueError):
        proxy.set("byte_limit")
    assert proxy.fault == Fault(mode="latency", latency_ms=5)
