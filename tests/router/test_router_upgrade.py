"""Hitless upgrade: a new router takes the listening sockets and the state over from the
running one (``--takeover``), under a load of keep-alive and new connections, with a
slow request in flight on the old router; nothing is refused, reset or lost."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
from router_harness import instance, table, version, wait_for

MAX_PER_CLIENT = 4000
"""Each load client stops by itself after this many requests."""


class Load:
    """Keep-alive and connection-per-request clients in a thread of their own."""

    def __init__(self, port: int, keepalive: int = 6, fresh: int = 3) -> None:
        self.port = port
        self.keepalive = keepalive
        self.fresh = fresh
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.done = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    async def run(self) -> None:
        clients = [self.client(True) for _ in range(self.keepalive)]
        clients += [self.client(False) for _ in range(self.fresh)]
        await asyncio.gather(*clients)

    async def client(self, keepalive: bool) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for _ in range(MAX_PER_CLIENT):
            if self.stop.is_set():
                break
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", self.port)
                reader, writer = conn
                close = b"" if keepalive else b"Connection: close\r\n"
                writer.write(b"GET /load HTTP/1.1\r\nHost: shop\r\n" + close + b"\r\n")
                status, closing = await asyncio.wait_for(read_response(reader), 10)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.done += 1
                if closing or not keepalive:
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() == "close"


def slow_request(url: str, out: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            out.append(httpx.get(url, timeout=20))
        except httpx.HTTPError as error:
            out.append(error)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def routes(a: Any, b: Any, c: Any) -> dict[str, Any]:
    v1 = version(
        "v1",
        1.0,
        [
            instance("a", a.address),
            instance("b", b.address, "draining"),
            instance("c", c.address),
        ],
    )
    v1["health"]["rise"] = 100  # c, once down, stays down for 10 s (0.1 s x 100)
    v1["drain_timeout"] = 1000
    return table([v1])


def by_id(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in state["instances"]}


def test_takeover_under_load_loses_nothing(backend_factory: Any, router_factory: Any) -> None:
    a, b, c = backend_factory("a"), backend_factory("b"), backend_factory("c")
    old = router_factory(routes(a, b, c), "--drain-timeout", "20")
    sock = old.tmp / "home" / f"router-{old.port}.sock"  # the documented default
    wait_for(sock.exists, what="upgrade socket")
    c.healthy = False
    wait_for(lambda: not by_id(old.state())["c"]["healthy"], what="c down in the old router")
    c.healthy = True  # the new router must not believe c is up: it learns what the old knew
    before = by_id(old.state())
    assert before["b"]["state"] == "draining" and before["b"]["drain_at"]
    slow: list[Any] = []
    t = slow_request(f"{old.url}/slow?ms=1500", slow)
    wait_for(lambda: any(q["path"].startswith("/slow") for q in a.requests), what="slow sent")
    with Load(old.port) as load:
        wait_for(lambda: load.done > 200, what="load running")
        new = router_factory(
            None, "--routes", str(old.routes_path), "--takeover", str(sock), sub=old.tmp.name
        )
        assert new.port == old.port and new.admin_port == old.admin_port
        assert old.proc.wait(30) == 0, old.log()
        t.join(10)
        assert slow and isinstance(slow[0], httpx.Response), slow
        assert slow[0].status_code == 200 and slow[0].text == "slow"
        served_at_exit = load.done
        wait_for(lambda: load.done > served_at_exit + 300, what="load served by the new router")
    assert load.errors == [], load.errors[:5]
    assert set(load.statuses) == {200}, load.statuses
    # the harness reads each router's stderr in a thread: poll for the lines, then assert
    wait_for(lambda: any("drains and exits" in x for x in old.lines), what="old log line")
    wait_for(lambda: any("took over generation 1" in x for x in new.lines), what="new log")
    after = by_id(new.state())  # only the new router is left to answer
    assert after["b"]["state"] == "draining"
    assert after["b"]["drain_at"] == before["b"]["drain_at"]  # the drain clock survived
    assert after["c"]["healthy"] is False  # health survived (a fresh router says True)
    assert not b.app_requests() and not c.app_requests()  # no new work to b or c, ever
    assert sock.exists()  # the new router took the path for the next upgrade


def test_sigusr2_starts_the_successor(backend_factory: Any, router_factory: Any) -> None:
    a, b, c = backend_factory("a"), backend_factory("b"), backend_factory("c")
    old = router_factory(routes(a, b, c))
    sock = old.tmp / "home" / f"router-{old.port}.sock"
    wait_for(sock.exists, what="upgrade socket")
    pid = old.proc.pid
    with Load(old.port, keepalive=2, fresh=1) as load:
        wait_for(lambda: load.done > 50, what="load running")
        os.kill(pid, signal.SIGUSR2)
        assert old.proc.wait(30) == 0, old.log()
        served = load.done
        wait_for(lambda: load.done > served + 100, what="load served by the successor")
    assert load.errors == [] and set(load.statuses) == {200}, (load.errors[:5], load.statuses)
    # the successor is in the old router's process group (the fixture kills it there)
    line = wait_for(
        lambda: next((x for x in old.lines if "serves; this one drains" in x), None),
        what="the old router's handover line",
    )
    successor = int(line.split("process ")[1].split()[0])
    assert os.getpgid(successor) == pid
    assert httpx.get(f"{old.url}/", timeout=5).json()["name"] in ("a", "c")
    os.kill(successor, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{successor}").exists() or _zombie(successor), what="exit")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_takeover_with_workers(backend_factory: Any, router_factory: Any) -> None:
    """Two workers hand over to three: each new worker serves (one a new socket)."""
    a, b, c = backend_factory("a"), backend_factory("b"), backend_factory("c")
    old = router_factory(routes(a, b, c), "--workers", "2")
    sock = old.tmp / "home" / f"router-{old.port}.sock"
    wait_for(sock.exists, what="upgrade socket")
    with Load(old.port, keepalive=4, fresh=2) as load:
        wait_for(lambda: load.done > 100, what="load running")
        new = router_factory(
            None,
            "--routes",
            str(old.routes_path),
            "--workers",
            "3",
            "--takeover",
            str(sock),
            sub=old.tmp.name,
        )
        assert old.proc.wait(30) == 0, old.log()
        served = load.done
        wait_for(lambda: load.done > served + 200, what="load served by the new workers")
    assert load.errors == [] and set(load.statuses) == {200}, (load.errors[:5], load.statuses)
    # each worker logs it before it serves; the harness reads stderr in a thread of its own
    wait_for(lambda: sum("took over generation 1" in x for x in new.lines) >= 3, what="3 logs")
    assert sum("took over generation 1" in x for x in new.lines) == 3
    assert by_id(new.state())["b"]["state"] == "draining"
    kids = Path(f"/proc/{new.proc.pid}/task/{new.proc.pid}/children").read_text().split()
    assert len(kids) == 3
    for _ in range(30):  # new connections: whichever worker accepts them answers
        assert httpx.get(f"{new.url}/", timeout=5).status_code == 200


def test_takeover_of_nobody_is_a_clear_error(router_factory: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    from router_harness import SRC

    missing = tmp_path / "nobody.sock"
    (tmp_path / "x.json").write_text('{"generation": 1, "apps": []}')
    cmd = [sys.executable, "-m", "skewless", "router", "--routes", "x.json"]
    proc = subprocess.run(
        [*cmd, "--takeover", str(missing)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert f"--takeover {missing}: no router answers there" in proc.stderr
    assert "Traceback" not in proc.stderr
