"""A fault-injecting TCP proxy for tests and benchmarks: put it between the router and
an instance, then make the wire misbehave.

Theory of operation. The proxy listens on 127.0.0.1 (port 0 by default) and relays
every accepted connection to one upstream, byte for byte, in two *pumps* (client ->
upstream is ``"up"``, upstream -> client is ``"down"``). A ``Fault`` says how the wire
behaves; ``set()`` replaces it at run time and the change is *live*: every pump reads
the current fault at each chunk, so a keep-alive connection that the router pooled
while the wire was healthy misbehaves from its next byte on (a router test cannot dodge
a fault by reusing an old connection). Byte counts for ``reset``/``byte_limit`` start
at the moment a connection first sees the new fault.

Modes:

- ``pass``: relay.
- ``latency``: wait ``latency_ms`` before relaying each chunk (both ways) and
  ``connect_ms`` before connecting upstream.
- ``reset``: ``after=None``: RST (SO_LINGER 0) at accept, before reading anything (on a
  live connection: at its next byte, which is dropped). ``after=N``: relay N bytes in
  ``direction`` then RST the client and drop the upstream connection.
- ``blackhole``: accept and never answer; what arrives is swallowed (both ways on a live
  connection; a new one never reaches the upstream).
- ``slow_close``: relay, but when the upstream closes, wait ``close_ms`` before closing
  towards the client (a late half-close).
- ``byte_limit``: relay ``after`` bytes in ``direction`` then close both sides cleanly
  (FIN, not RST): a response cut short.
- ``refuse``: stop listening, so connects are refused (nothing is sent: the one failure a
  proxy may retry); connections that were open are reset, as when an instance dies.

``FaultProxy`` runs in the caller's event loop; ``ThreadedFaultProxy`` runs one in a
thread of its own for synchronous tests (``with ThreadedFaultProxy(addr) as p: ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Mode = Literal["pass", "latency", "reset", "blackhole", "slow_close", "byte_limit", "refuse"]
Direction = Literal["up", "down"]
MODES: tuple[Mode, ...] = (
    "pass",
    "latency",
    "reset",
    "blackhole",
    "slow_close",
    "byte_limit",
    "refuse",
)
CHUNK = 65536


@dataclass(frozen=True, kw_only=True)
class Fault:
    mode: Mode = "pass"
    latency_ms: float = 0.0
    """``latency``: delay before each relayed chunk."""
    connect_ms: float = 0.0
    """``latency``: delay between accepting and connecting upstream."""
    after: int | None = None
    """``reset``: bytes relayed in ``direction`` before the RST (None: at once).
    ``byte_limit``: bytes relayed in ``direction`` before the clean close."""
    direction: Direction = "down"
    close_ms: float = 0.0
    """``slow_close``: delay between the upstream's close and ours."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fault.mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.direction not in ("up", "down"):
            raise ValueError(f"fault.direction must be 'up' or 'down' (got {self.direction!r})")
        if self.mode == "byte_limit" and (self.after is None or self.after < 0):
            raise ValueError("fault.after must be a byte count >= 0 for mode byte_limit")
        if self.after is not None and self.after < 0:
            raise ValueError(f"fault.after must be >= 0 (got {self.after})")
        for name in ("latency_ms", "connect_ms", "close_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"fault.{name} must be >= 0")


@dataclass
class Stats:
    accepted: int = 0
    upstream_connects: int = 0
    resets: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Cut(Exception):
    """The fault ended the connection; both pumps stop."""


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    epoch: int
    upstream: asyncio.StreamWriter | None = None
    counted: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self, *, rst: bool) -> None:
        if rst:
            _rst(self.client)
        else:
            self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


class FaultProxy:
    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        if not up_host or not up_port.isdigit():
            raise ValueError(f"upstream must look like 127.0.0.1:9001 (got {upstream!r})")
        self.upstream = (up_host, int(up_port))
        self.host = host
        self.port = port
        self.fault = Fault()
        self.epoch = 0
        self.stats = Stats()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    def __repr__(self) -> str:
        return (
            f"FaultProxy({self.address} -> {self.upstream[0]}:{self.upstream[1]} "
            f"{self.fault.mode} open={len(self._conns)})"
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        await self._stop_listening()
        for conn in list(self._conns):
            conn.abort(rst=False)
            for t in conn.tasks:
                t.cancel()
        self._conns.clear()

    async def set(self, mode: Mode = "pass", **params: Any) -> Fault:
        """Switch the wire's behaviour (live, see the module docstring)."""
        fault = Fault(mode=mode, **params)
        was = self.fault.mode
        self.fault = fault
        self.epoch += 1
        if mode == "refuse" and was != "refuse":
            await self._stop_listening()
            for conn in list(self._conns):
                conn.abort(rst=True)
        elif mode != "refuse" and was == "refuse":
            await self.start()
        return fault

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ---- one connection ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        conn = _Conn(client=writer, epoch=self.epoch)
        self._conns.add(conn)
        try:
            fault = self.fault
            if fault.mode in ("reset", "refuse") and not fault.after:
                self.stats.resets += 1
                _rst(writer)
                return
            if fault.mode == "blackhole":
                while await reader.read(CHUNK):
                    pass
                writer.close()
                return
            if fault.mode == "latency" and fault.connect_ms:
                await asyncio.sleep(fault.connect_ms / 1000)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                self.stats.resets += 1
                _rst(writer)  # the instance is down: so is our side
                return
            self.stats.upstream_connects += 1
            conn.upstream = up_writer
            conn.tasks = [
                asyncio.ensure_future(self._pump(conn, reader, up_writer, "up")),
                asyncio.ensure_future(self._pump(conn, up_reader, writer, "down")),
            ]
            # A pump that cuts the connection cancels the other; EOF ends one way only.
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # close() cancels handlers mid-way; asyncio's stream callback would log a
            # cancelled handler task as an error.
            pass
        finally:
            self._conns.discard(conn)
            if not writer.transport.is_closing():
                writer.close()
            if conn.upstream is not None and not conn.upstream.transport.is_closing():
                conn.upstream.close()

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        try:
            while True:
                try:
                    data = await src.read(CHUNK)
                except OSError as exc:
                    raise _Cut from exc
                fault = self.fault
                if conn.epoch != self.epoch:
                    conn.epoch = self.epoch
                    conn.counted = {"up": 0, "down": 0}
                if not data:
                    if fault.mode == "slow_close" and direction == "down":
                        await asyncio.sleep(fault.close_ms / 1000)
                    if dst.can_write_eof() and not dst.transport.is_closing():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                if fault.mode == "blackhole":
                    continue
                if fault.mode == "reset" and fault.after is None:
                    self.stats.resets += 1
                    conn.abort(rst=True)
                    raise _Cut
                if fault.mode == "latency" and fault.latency_ms:
                    await asyncio.sleep(fault.latency_ms / 1000)
                cut = None
                if fault.mode in ("reset", "byte_limit") and fault.direction == direction:
                    assert fault.after is not None
                    budget = fault.after - conn.counted[direction]
                    if budget <= len(data):
                        data, cut = data[: max(budget, 0)], fault.mode
                conn.counted[direction] += len(data)
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                if data:
                    dst.write(data)
                    with contextlib.suppress(OSError):
                        await dst.drain()
                if cut == "reset":
                    self.stats.resets += 1
                    conn.abort(rst=True)
                    raise _Cut
                if cut == "byte_limit":
                    self.stats.cuts += 1
                    conn.client.close()
                    if conn.upstream is not None:
                        conn.upstream.close()
                    raise _Cut
        except (_Cut, ConnectionError):
            for t in conn.tasks:
                if t is not asyncio.current_task():
                    t.cancel()


class ThreadedFaultProxy:
    """A ``FaultProxy`` on an event loop in a daemon thread, for synchronous callers.

    ``set()`` blocks until the new fault is in force; ``close()`` (or leaving the
    ``with`` block) stops the proxy, drops its connections and joins the thread.
    """

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proxy = FaultProxy(upstream, host=host, port=port)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self.proxy.start)

    def __repr__(self) -> str:
        return f"Threaded{self.proxy!r}"

    def __enter__(self) -> ThreadedFaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return self.proxy.address

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def stats(self) -> Stats:
        return replace(self.proxy.stats)

    @property
    def fault(self) -> Fault:
        return self.proxy.fault

    @property
    def open_connections(self) -> int:
        return self.proxy.open_connections

    def set(self, mode: Mode = "pass", **params: Any) -> Fault:
        async def switch() -> Fault:
            return await self.proxy.set(mode, **params)

        return self._call(switch)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self.proxy.close)

            async def settle() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                self._call(settle)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    def _call(self, make: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout=10)
