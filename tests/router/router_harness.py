"""Real parts for router tests: tiny HTTP backends on 127.0.0.1 (an asyncio server in a
thread of the test process) and the router itself as a CLI subprocess.

Backend paths:
  /healthz          200, or 503 when ``backend.healthy`` is False
  /slow?ms=N        answers after N ms
  /hang             never answers
  /big?n=N          N bytes, chunked
  /close-mid        promises 1000 bytes, sends 10, closes
  /close-delimited  no length, no chunks: the body ends when the connection does
  /ws               101 then echoes raw bytes
  /upload           counts and hashes the body, answers {"len", "sha256"}
  anything else     JSON echo: name, method, path, headers
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
KEY = "k1:0123456789abcdef0123456789abcdef"


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _BackendConn(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.tunnel = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.backend.connections += 1
        self.backend.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if self.tunnel and rest:
                self.transport.write(rest)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_len = 0
        self.sha = hashlib.sha256()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.backend.heads.append((self.parser.get_method().decode(), self.url.decode()))
        if any(k.lower() == "expect" and v.lower() == "100-continue" for k, v in self.headers):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        self.sha.update(body)

    def on_message_complete(self) -> None:
        b = self.backend
        method = self.parser.get_method().decode()
        path = self.url.decode()
        b.requests.append({"method": method, "path": path, "headers": self.headers})
        route, _, query = path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if route == "/healthz":
            status = 200 if b.healthy else 503
            self.send(status, b"ok" if b.healthy else b"down")
        elif route == "/slow":
            asyncio.get_running_loop().call_later(
                int(params.get("ms", "100")) / 1000, self.send, 200, b"slow"
            )
        elif route == "/hang":
            pass
        elif route == "/big":
            n = int(params.get("n", "1000"))
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            left = n
            while left:
                part = chunk[: min(left, 65536)]
                self.transport.write(b"%x\r\n%s\r\n" % (len(part), part))
                left -= len(part)
            self.transport.write(b"0\r\n\r\n")
        elif route == "/close-delimited":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
            )
            self.transport.close()
        elif route == "/close-mid":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            self.transport.close()
        elif route == "/ws":
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n"
            )
            self.tunnel = True
        elif route == "/upload":
            body = json.dumps({"len": self.body_len, "sha256": self.sha.hexdigest()})
            self.send(200, body.encode())
        else:
            echo = {"name": b.name, "method": method, "path": path, "headers": self.headers}
            self.send(200, json.dumps(echo).encode())

    def send(self, status: int, body: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n"
            b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n%s" % (status, len(body), body)
        )


class Backend:
    """An HTTP/1.1 server on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.requests: list[dict[str, Any]] = []
        self.heads: list[tuple[str, str]] = []
        self.connections = 0
        self.transports: set[Any] = set()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        ready = threading.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._sock = sock

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                self.server = await self.loop.create_server(
                    lambda: _BackendConn(self), sock=self._sock
                )
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def app_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] != "/healthz"]

    def stop(self) -> None:
        def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            for t in self.transports:
                t.abort()
            # after the aborts' connection_lost callbacks (already queued): stopping in
            # this iteration would leave them unrun, the sockets open (ResourceWarning)
            self.loop.call_soon(self.loop.stop)

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(shutdown)
            self.thread.join(5)
        self.loop.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def backend_factory() -> Iterator[Callable[[str], Backend]]:
    made: list[Backend] = []

    def make(name: str) -> Backend:
        b = Backend(name)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            b.stop()


def instance(iid: str, address: str, state: str = "ready") -> dict[str, Any]:
    return {"id": iid, "address": address, "state": state}


def version(
    name: str,
    weight: float,
    instances: list[dict[str, Any]],
    state: str = "live",
    interval: float = 0.1,
) -> dict[str, Any]:
    return {
        "version": name,
        "state": state,
        "weight": weight,
        "health": {"path": "/healthz", "interval": interval, "timeout": 0.5},
        "instances": instances,
    }


def table(
    versions: list[dict[str, Any]],
    generation: int = 1,
    name: str = "shop",
    hosts: list[str] | None = None,
    session: dict[str, Any] | None = None,
    extra_apps: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    app: dict[str, Any] = {"name": name, "hosts": hosts or ["*"], "versions": versions}
    if session is not None:
        app["session"] = session
    return {"generation": generation, "apps": [app, *(extra_apps or [])]}


class Router:
    """``skewless router`` as a subprocess in its own process group."""

    def __init__(self, tmp: Path, routes: dict[str, Any] | None, args: list[str]) -> None:
        self.tmp = tmp
        self.routes_path = tmp / "routes.json"
        self.keys_path = tmp / "keys.txt"
        if routes is not None:
            self.write_routes(routes)
        if not self.keys_path.exists():
            self.keys_path.write_text(KEY + "\n")
        cmd = [sys.executable, "-m", "skewless", "router", "--listen", "127.0.0.1:0"]
        if routes is not None:
            cmd += ["--routes", str(self.routes_path)]
        cmd += ["--keys", str(self.keys_path), "--admin", "127.0.0.1:0", "--watch-interval", "0.1"]
        cmd += args
        env = dict(os.environ, PYTHONPATH=str(SRC), SKEWLESS_HOME=str(tmp / "home"))
        env.pop("SKEWLESS_TOKEN", None)
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, start_new_session=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = wait_for(
            lambda: next((x for x in self.lines if "listening on" in x), None), 15, "router start"
        )
        m = re.search(r"listening on http://([\d.]+):(\d+)(?:, admin http://([\d.]+):(\d+))?", line)
        assert m, line
        self.port = int(m.group(2))
        self.admin_port = int(m.group(4)) if m.group(4) else None
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        wait_for(self._serving, 15, "router accepting")

    def _serving(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def log(self) -> str:
        return "\n".join(self.lines)

    def write_routes(self, routes: dict[str, Any]) -> None:
        tmp = self.routes_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(routes))
        os.replace(tmp, self.routes_path)

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig) if sig != signal.SIGHUP else self.proc.send_signal(sig)

    def state(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.admin}/v1/state", timeout=5).json()

    def generation(self) -> int:
        return int(self.state()["generation"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def router_factory(tmp_path: Path) -> Iterator[Callable[..., Router]]:
    made: list[Router] = []

    def make(routes: dict[str, Any] | None, *args: str, sub: str = "") -> Router:
        d = tmp_path / (sub or f"r{len(made)}")
        d.mkdir(exist_ok=True)
        r = Router(d, routes, list(args))
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.stop()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the router closes the connection (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out


_LEFTOVER: dict[int, bytes] = {}


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length or chunked response from a socket (keeping what follows
    it for the next call: responses to pipelined requests may share a read)."""
    status, headers, body, rest = _read_response(s, _LEFTOVER.pop(s.fileno(), b""))
    if rest:
        _LEFTOVER[s.fileno()] = rest
    return status, headers, body


def _read_response(s: socket.socket, buf: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    data = bytearray(buf)
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {bytes(data)!r}")
        data += chunk
    end = data.index(b"\r\n\r\n")
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    pos = end + 4
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()

    def need(n: int) -> None:
        while len(data) < n:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed mid-body")
            data.extend(chunk)

    if "content-length" in headers:
        n = int(headers["content-length"])
        need(pos + n)
        return status, headers, bytes(data[pos : pos + n]), bytes(data[pos + n :])
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            while data.find(b"\r\n", pos) < 0:
                need(len(data) + 1)
            eol = data.index(b"\r\n", pos)
            size = int(bytes(data[pos:eol]), 16)
            pos = eol + 2
            need(pos + size + 2)
            body += data[pos : pos + size]
            pos += size + 2
            if size == 0:
                return status, headers, bytes(body), bytes(data[pos:])
    return status, headers, bytes(data[pos:]), b""


class FakeTransport:
    """A transport for protocols driven in process: keeps what is written."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def writelines(self, data: Any) -> None:
        self.sent.append(b"".join(data))

    def get_extra_info(self, key: str) -> object:
        return ("127.0.0.1", 5555)

    def set_write_buffer_limits(self, high: int) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        out = b"".join(self.sent)
        self.sent = []
        return out
