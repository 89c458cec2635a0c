"""Long-lived connections across a release: WebSockets and long-polls to an instance that
turns draining stay up until its drain deadline (from the route table); then each
WebSocket gets a clean close 1001 from the router, long-polls have completed, and
reconnects land on the new version. The router's own SIGTERM drain does the same.

The WebSocket client and server here are minimal RFC 6455 framing (no library)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest
from router_harness import instance, table, version, wait_for

N_WS = 50
N_POLLS = 50


# ---- minimal WebSocket framing --------------------------------------------------------


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(opcode, was masked, unmasked payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if key is not None:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return b0 & 0x0F, key is not None, data


class WsBackend:
    """An HTTP/1.1 + WebSocket echo server in a thread: ``/ws`` (echo, answers a close),
    ``/poll`` (answers when the test releases it), ``/healthz``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.polls = 0
        self.ws_open = 0
        self.closes: list[int] = []
        """Close codes received from the router, one per WebSocket."""
        self.eofs = 0
        self.loop = asyncio.new_event_loop()
        self.release: asyncio.Event | None = None
        self.server: asyncio.Server | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                self.release = asyncio.Event()
                self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)
        assert self.server is not None
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def release_polls(self) -> None:
        assert self.release is not None
        self.loop.call_soon_threadsafe(self.release.set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/ws"):
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\n"
                    )
                    await self.websocket(reader, writer)
                    return
                body = self.name.encode()
                if path.startswith(b"/poll"):
                    self.polls += 1
                    assert self.release is not None
                    await self.release.wait()
                    body = b"polled " + body
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ws_open += 1
        try:
            while True:
                opcode, masked, data = await read_frame(reader)
                assert masked, "client frames must be masked"
                if opcode == 8:
                    self.closes.append(int.from_bytes(data[:2], "big"))
                    writer.write(frame(8, data[:2], mask=False))
                    return
                writer.write(frame(opcode, data, mask=False))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1

    def stop(self) -> None:
        def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def ws_backends() -> Any:
    made: list[WsBackend] = []

    def make(name: str) -> WsBackend:
        made.append(WsBackend(name))
        return made[-1]

    try:
        yield make
    finally:
        for b in made:
            b.stop()


class Ws:
    """A WebSocket client through the router."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.version = ""
        self.closed_at = 0.0

    @classmethod
    async def connect(cls, port: int) -> Ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        assert head.startswith("HTTP/1.1 101"), head
        ws = cls(reader, writer)
        for line in head.split("\r\n"):
            if line.lower().startswith("skewless-version:"):
                ws.version = line.split(":", 1)[1].strip()
        return ws

    async def echo(self, text: bytes) -> bytes:
        self.writer.write(frame(1, text, mask=True))
        opcode, masked, data = await asyncio.wait_for(read_frame(self.reader), 10)
        assert opcode == 1 and not masked
        return data

    async def closed_by_router(self) -> tuple[int, bytes]:
        """Wait for the router's close frame, answer it, see the TCP close."""
        opcode, masked, data = await asyncio.wait_for(read_frame(self.reader), 15)
        self.closed_at = time.time()
        assert opcode == 8 and not masked, (opcode, masked, data)
        self.writer.write(frame(8, data[:2], mask=True))
        assert await asyncio.wait_for(self.reader.read(), 10) == b""  # then the TCP close
        self.writer.close()
        return int.from_bytes(data[:2], "big"), data[2:]


async def long_poll(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /poll HTTP/1.1\r\nHost: shop\r\n\r\n")
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode("latin-1")
    length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split()[1]), body


def tables(a: WsBackend, b: WsBackend, deadline: float | None) -> dict[str, Any]:
    """Generation 1: v1 takes everything. Later: v1 and its instance drain, v2 live."""
    if deadline is None:
        return table([version("v1", 1.0, [instance("a", a.address)]), version("v2", 0.0, [])])
    a_inst = instance("a", a.address, "draining")
    a_inst["drain_deadline"] = deadline
    return table(
        [
            version("v1", 0.0, [a_inst], state="draining"),
            version("v2", 1.0, [instance("b", b.address)]),
        ],
        generation=2 if deadline > time.time() + 60 else 3,
    )


def test_websockets_and_long_polls_live_until_the_drain_deadline(
    ws_backends: Any, router_factory: Any
) -> None:
    a, b = ws_backends("v1"), ws_backends("v2")
    for x in (a, b):  # health checks ask /healthz: the backend answers 200 to any path
        assert x.address
    r = router_factory(tables(a, b, None), "--drain-timeout", "30")

    async def scenario() -> None:
        sockets = [await Ws.connect(r.port) for _ in range(N_WS)]
        assert {ws.version for ws in sockets} == {"v1"}
        polls = [asyncio.create_task(long_poll(r.port)) for _ in range(N_POLLS)]
        await asyncio.to_thread(wait_for, lambda: a.polls == N_POLLS, 15, "polls at v1")
        # the release: v1's instance drains, with a deadline an hour away
        r.write_routes(tables(a, b, time.time() + 3600))
        await asyncio.to_thread(wait_for, lambda: r.generation() == 2, 10, "generation 2")
        for k, ws in enumerate(sockets):  # still up, still echoing, after the reload
            assert await ws.echo(b"hello %d" % k) == b"hello %d" % k
        assert not any(p.done() for p in polls)
        a.release_polls()  # the long-polls finish before the deadline: normally
        results = await asyncio.gather(*polls)
        assert results == [(200, b"polled v1")] * N_POLLS
        for ws in sockets:
            assert await ws.echo(b"still") == b"still"
        # the controller moves the deadline to a second from now: it comes by itself
        deadline = time.time() + 1.0
        r.write_routes(tables(a, b, deadline))
        closes = await asyncio.gather(*(ws.closed_by_router() for ws in sockets))
        assert closes == [(1001, b"going away")] * N_WS
        assert min(ws.closed_at for ws in sockets) >= deadline  # none before its deadline
        await asyncio.to_thread(
            wait_for, lambda: len(a.closes) + a.eofs == N_WS, 10, "instance side closed"
        )
        assert a.closes == [1001] * N_WS  # each got a (masked) close frame first
        again = [await Ws.connect(r.port) for _ in range(5)]  # reconnects: the new version
        assert {ws.version for ws in again} == {"v2"}
        assert await again[0].echo(b"on v2") == b"on v2"
        assert b.ws_open == 5
        for ws in again:
            ws.writer.close()

    asyncio.run(scenario())
    state = {i["id"]: i for i in r.state()["instances"]}
    assert state["a"]["inflight"] == 0


def test_sigterm_drain_closes_websockets_with_1001(ws_backends: Any, router_factory: Any) -> None:
    a, b = ws_backends("v1"), ws_backends("v2")
    r = router_factory(tables(a, b, None), "--drain-timeout", "1")

    async def scenario() -> None:
        sockets = [await Ws.connect(r.port) for _ in range(5)]
        for ws in sockets:
            assert await ws.echo(b"x") == b"x"
        os.kill(r.proc.pid, signal.SIGTERM)
        await asyncio.to_thread(wait_for, lambda: any("draining" in x for x in r.lines))
        assert await sockets[0].echo(b"during the drain") == b"during the drain"
        closes = await asyncio.gather(*(ws.closed_by_router() for ws in sockets))
        assert closes == [(1001, b"going away")] * 5

    asyncio.run(scenario())
    assert r.proc.wait(15) == 0
    assert any("WebSockets get 1001" in x for x in r.lines)


def test_websockets_on_a_router_that_hands_over_get_1001_at_its_deadline(
    ws_backends: Any, router_factory: Any
) -> None:
    a, b = ws_backends("v1"), ws_backends("v2")
    old = router_factory(tables(a, b, None), "--drain-timeout", "1")
    sock = old.tmp / "home" / f"router-{old.port}.sock"
    wait_for(sock.exists, what="upgrade socket")

    async def scenario() -> None:
        sockets = [await Ws.connect(old.port) for _ in range(5)]
        new = await asyncio.to_thread(
            router_factory,
            None,
            "--routes",
            str(old.routes_path),
            "--takeover",
            str(sock),
            sub=old.tmp.name,
        )
        # "draining:" is logged once the old router has stopped accepting
        await asyncio.to_thread(wait_for, lambda: any("draining:" in x for x in old.lines))
        assert await sockets[0].echo(b"old router, draining") == b"old router, draining"
        fresh = await Ws.connect(new.port)  # the same port: the new router answers
        closes = await asyncio.gather(*(ws.closed_by_router() for ws in sockets))
        assert closes == [(1001, b"going away")] * 5
        assert await fresh.echo(b"new router") == b"new router"  # not the old one's
        fresh.writer.close()

    asyncio.run(scenario())
    assert old.proc.wait(15) == 0
