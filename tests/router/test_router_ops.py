"""Operating the router: reloads, keys, health, ejection, drain, admin, workers, controller."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from router_harness import SRC, closed_port, instance, table, version, wait_for


def one_version(b: Any, name: str = "v1", generation: int = 1, **kw: Any) -> dict[str, Any]:
    return table(
        [version(name, 1.0, [instance(f"{name}/0", b.address)], **kw)], generation=generation
    )


def slow_request(url: str, out: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            resp = httpx.get(url, timeout=20)
            out.append((resp.status_code, resp.text, resp.headers.get("skewless-version")))
        except httpx.HTTPError as error:
            out.append(error)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_file_change_reloads_without_disturbing_in_flight(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(one_version(b1))
    out: list[Any] = []
    t = slow_request(f"{r.url}/slow?ms=600", out)
    wait_for(lambda: any(q["path"].startswith("/slow") for q in b1.requests), what="slow sent")
    r.write_routes(one_version(b2, "v2", generation=2))
    wait_for(lambda: r.generation() == 2, what="reload")
    assert httpx.get(f"{r.url}/").json()["name"] == "v2"
    t.join(20)
    assert out == [(200, "slow", "v1")]


def test_sighup_reloads_and_invalid_file_keeps_the_old_table(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(one_version(b1), "--watch-interval", "3600")
    r.write_routes(one_version(b2, "v2", generation=2))
    assert r.generation() == 1  # no file watching at this interval: only SIGHUP
    r.signal(signal.SIGHUP)
    wait_for(lambda: r.generation() == 2, what="SIGHUP reload")
    bad = one_version(b1, generation=3)
    bad["apps"][0]["versions"][0]["weight"] = 7
    r.write_routes(bad)
    r.signal(signal.SIGHUP)
    line = wait_for(
        lambda: next((x for x in r.lines if "routes not reloaded" in x), None), what="error line"
    )
    assert "apps[0].versions[0].weight must be a number between 0 and 1" in line
    assert "generation 2 stays in force" in line and str(r.routes_path) in line
    assert r.generation() == 2 and httpx.get(f"{r.url}/").json()["name"] == "v2"
    r.routes_path.write_text("{not json")
    r.signal(signal.SIGHUP)
    wait_for(lambda: any("not valid JSON at line 1" in x for x in r.lines), what="json error")
    assert httpx.get(f"{r.url}/").status_code == 200


def test_keys_rotation_keeps_pins_and_removal_drops_them(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(
        table(
            [
                version("v1", 1.0, [instance("a", b1.address)]),
                version("v2", 0.0, [instance("b", b2.address)]),
            ]
        )
    )
    first = httpx.get(f"{r.url}/")
    token = first.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert token.startswith("s1.k1.")
    # v2 takes all new sessions now: only a still-valid pin reaches v1
    r.write_routes(
        table(
            [
                version("v1", 0.0, [instance("a", b1.address)]),
                version("v2", 1.0, [instance("b", b2.address)]),
            ],
            generation=2,
        )
    )
    wait_for(lambda: r.generation() == 2, what="reload")
    r.keys_path.write_text(
        "k2:abcdefabcdefabcdefabcdefabcdef00\nk1:0123456789abcdef0123456789abcdef\n"
    )
    wait_for(lambda: any("keys reloaded" in x and "k2 sign" in x for x in r.lines), what="keys")
    kept = httpx.get(f"{r.url}/", cookies={"skewless-shop": token})
    assert kept.headers["skewless-version"] == "v1" and "set-cookie" not in kept.headers
    fresh = httpx.get(f"{r.url}/")
    assert ".k2." in fresh.headers["set-cookie"]
    r.keys_path.write_text("k2:abcdefabcdefabcdefabcdefabcdef00\n")
    wait_for(lambda: sum("keys reloaded" in x for x in r.lines) >= 2, what="second keys reload")
    dropped = httpx.get(f"{r.url}/", cookies={"skewless-shop": token})
    assert dropped.headers["skewless-version"] == "v2" and ".k2." in dropped.headers["set-cookie"]
    r.keys_path.write_text("broken line without colon\n")
    wait_for(lambda: any("keys not reloaded" in x for x in r.lines), what="bad keys line")
    assert httpx.get(f"{r.url}/").status_code == 200


def test_active_health_checks_fall_and_rise(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(one_version(b))
    b.healthy = False
    wait_for(lambda: r.state()["instances"][0]["healthy"] is False, what="down")
    resp = httpx.get(f"{r.url}/")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    b.healthy = True
    wait_for(lambda: r.state()["instances"][0]["healthy"] is True, what="up")
    assert httpx.get(f"{r.url}/").status_code == 200
    assert any("failed 3 times" in x for x in r.lines)


def test_passive_ejection_is_capped(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    dead = f"127.0.0.1:{closed_port()}"
    r = router_factory(
        table(
            [
                version(
                    "v1", 1.0, [instance("dead", dead), instance("live", b.address)], interval=60
                ),
                version("v2", 0.0, [instance("alone", f"127.0.0.1:{closed_port()}")], interval=60),
            ]
        )
    )
    for _ in range(20):
        assert httpx.get(f"{r.url}/").status_code == 200
    states = {i["id"]: i for i in r.state()["instances"]}
    assert states["dead"]["ejected"] is True and states["live"]["ejected"] is False
    # v2's only instance is never ejected by passive checks alone
    r.write_routes(
        table(
            [
                version(
                    "v1", 0.0, [instance("dead", dead), instance("live", b.address)], interval=60
                ),
                version("v2", 1.0, [instance("alone", f"127.0.0.1:{closed_port()}")], interval=60),
            ],
            generation=2,
        )
    )
    wait_for(lambda: r.generation() == 2, what="reload")
    for _ in range(5):
        # New sessions that cannot reach v2 are served by live v1 instead (they have
        # seen no version yet: no skew); see tests/security/test_faults_upstream.py.
        got = httpx.get(f"{r.url}/")
        assert (got.status_code, got.headers["skewless-version"]) == (200, "v1")
    assert {i["id"]: i for i in r.state()["instances"]}["alone"]["ejected"] is False


def test_draining_instance_finishes_in_flight_and_gets_no_new_work(
    backend_factory: Any, router_factory: Any
) -> None:
    a, b = backend_factory("a"), backend_factory("b")
    r = router_factory(table([version("v1", 1.0, [instance("a", a.address)])]))
    out: list[Any] = []
    t = slow_request(f"{r.url}/slow?ms=600", out)
    wait_for(lambda: any(q["path"].startswith("/slow") for q in a.requests), what="slow sent")
    r.write_routes(
        table(
            [version("v1", 1.0, [instance("a", a.address, "draining"), instance("b", b.address)])],
            generation=2,
        )
    )
    wait_for(lambda: r.generation() == 2, what="reload")
    before = len(a.app_requests())
    for _ in range(10):
        assert httpx.get(f"{r.url}/").json()["name"] == "b"
    t.join(20)
    assert out == [(200, "slow", "v1")] and len(a.app_requests()) == before


def test_admin_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"generation": 1, "apps": []}))
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("SKEWLESS_TOKEN", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skewless",
            "router",
            "--listen",
            "127.0.0.1:0",
            "--routes",
            str(tmp_path / "r.json"),
            "--admin",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 2
    assert "not a loopback address: give --token" in done.stderr and "Traceback" not in done.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "skewless",
            "router",
            "--listen",
            "127.0.0.1:0",
            "--routes",
            str(tmp_path / "missing.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert bad.returncode == 2 and "missing.json: cannot read" in bad.stderr


def test_workers_share_the_port_and_all_see_reloads(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(one_version(b1), "--workers", "2", "--watch-interval", "3600")
    children = wait_for(
        lambda: (
            [p for p in Path(f"/proc/{r.proc.pid}/task/{r.proc.pid}/children").read_text().split()]
            if len(Path(f"/proc/{r.proc.pid}/task/{r.proc.pid}/children").read_text().split()) == 2
            else None
        ),
        what="two workers",
    )
    assert len(children) == 2
    for _ in range(20):  # a new connection each time: both workers answer
        assert httpx.get(f"{r.url}/").json()["name"] == "v1"
    r.write_routes(one_version(b2, "v2", generation=2))
    r.signal(signal.SIGHUP)
    wait_for(lambda: sum("generation 2 in force" in x for x in r.lines) == 2, what="both reload")
    for _ in range(20):
        assert httpx.get(f"{r.url}/").json()["name"] == "v2"
    # a worker that dies is started again; the port keeps answering meanwhile
    kids = Path(f"/proc/{r.proc.pid}/task/{r.proc.pid}/children")
    os.kill(int(children[0]), signal.SIGKILL)
    wait_for(
        lambda: len(kids.read_text().split()) == 2 and children[0] not in kids.read_text().split(),
        what="worker restarted",
    )
    assert any("starting it again" in x for x in r.lines)
    for _ in range(20):  # the new worker serves the table in force, not the first one
        assert httpx.get(f"{r.url}/").json()["name"] == "v2"


def test_workers_metrics_show_every_worker(
    backend_factory: Any, router_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --workers 2, worker 0's /metrics has both workers' samples (label
    ``worker``), each family once; the supervisor removes its metrics directory."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    b = backend_factory("v1")
    r = router_factory(one_version(b), "--workers", "2", "--watch-interval", "3600")
    for _ in range(40):  # a new connection each time: the kernel spreads them
        assert httpx.get(f"{r.url}/").status_code == 200

    def served() -> dict[str, int] | None:
        text = httpx.get(f"{r.admin}/metrics", timeout=5).text
        per: dict[str, int] = {}
        for m in re.finditer(r'skewless_requests_total\{[^}]*worker="(\d)"\} (\d+)', text):
            per[m[1]] = per.get(m[1], 0) + int(m[2])
        return per if sum(per.values()) == 40 else None

    per = wait_for(served, what="both workers' requests in /metrics")
    assert set(per) == {"0", "1"} and all(n > 0 for n in per.values()), per
    text = httpx.get(f"{r.admin}/metrics", timeout=5).text
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)) and "# TYPE skewless_requests_total counter" in types
    assert 'skewless_client_connections{worker="1"}' in text
    assert next(p.name for p in tmpdir.iterdir()).startswith("skewless-router-metrics-")
    r.signal(signal.SIGTERM)
    assert r.proc.wait(20) == 0
    assert list(tmpdir.iterdir()) == []


def test_sigterm_drains_in_flight_and_exits_zero(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(one_version(b))
    out: list[Any] = []
    t = slow_request(f"{r.url}/slow?ms=700", out)
    wait_for(lambda: any(q["path"].startswith("/slow") for q in b.requests), what="slow sent")
    os.kill(r.proc.pid, signal.SIGTERM)
    wait_for(lambda: any("draining" in x for x in r.lines), what="drain start")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", r.port), timeout=2).close()
    t.join(20)
    assert out == [(200, "slow", "v1")]
    assert r.proc.wait(10) == 0


class FakeController:
    """The controller's router-facing API: long-poll routes, collect reports."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.reports: list[tuple[str, dict[str, Any], str | None]] = []
        self.cond = threading.Condition()
        ctl = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                q = parse_qs(url.query)
                if url.path != "/v1/routes":
                    self.send_error(404)
                    return
                known = int(q["generation"][0]) if "generation" in q else None
                wait = min(float(q.get("wait", ["25"])[0]), 2.0)
                with ctl.cond:
                    ctl.cond.wait_for(lambda: ctl.routes["generation"] != known, timeout=wait)
                    body = (
                        json.dumps(ctl.routes).encode()
                        if ctl.routes["generation"] != known
                        else None
                    )
                if body is None:
                    self.send_response(204)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                router_id = self.path.split("/")[3]
                ctl.reports.append((router_id, body, self.headers.get("Authorization")))
                self.send_response(204)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, routes: dict[str, Any]) -> None:
        with self.cond:
            self.routes = routes
            self.cond.notify_all()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_controller_mode_watches_reports_and_serves_the_cache_when_down(
    backend_factory: Any, router_factory: Any, tmp_path: Path
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    ctl = FakeController(one_version(b1, generation=5))
    cache = tmp_path / "cache" / "routes.json"
    try:
        r = router_factory(
            None,
            "--controller",
            ctl.url,
            "--id",
            "r1",
            "--cache",
            str(cache),
            "--report-interval",
            "0.2",
            "--token",
            "sekret",
        )
        wait_for(lambda: r.generation() == 5, what="first table")
        with httpx.Client(base_url=r.url) as c:
            assert c.get("/").json()["name"] == "v1"
            ctl.publish(one_version(b2, "v2", generation=6))
            wait_for(lambda: r.generation() == 6, what="long-poll update")
            assert c.get("/").headers["skewless-version"] == "v2"  # v1 gone: re-pinned
        wait_for(lambda: json.loads(cache.read_text())["generation"] == 6, what="cache")
        report = wait_for(
            lambda: next(
                (
                    rep
                    for rep in reversed(ctl.reports)
                    if rep[1]["generation"] == 6
                    and rep[1]["apps"][0]["versions"][0]["requests"] >= 1
                ),
                None,
            ),
            what="report",
        )
        router_id, body, auth = report
        assert router_id == "r1" and body["router_id"] == "r1" and auth == "Bearer sekret"
        v2 = body["apps"][0]["versions"][0]
        assert v2["version"] == "v2" and v2["errors_5xx"] == 0 and v2["sessions"] == 1
        assert set(v2) >= {"rps", "latency_ms", "last_pinned_at", "connect_failures"}
        assert v2["latency_ms"]["le_inf"] == v2["requests"]
        assert body["instances"][0]["id"] == "v2/0" and body["instances"][0]["healthy"] is True
        r.stop()
    finally:
        ctl.stop()
    # the controller is gone: a restarted router serves the cached table
    r2 = router_factory(
        None, "--controller", f"http://127.0.0.1:{closed_port()}", "--cache", str(cache)
    )
    assert r2.generation() == 6 and httpx.get(f"{r2.url}/").json()["name"] == "v2"


def test_tunnel_to_a_draining_then_removed_instance_lives_on(
    backend_factory: Any, router_factory: Any
) -> None:
    a, b = backend_factory("a"), backend_factory("b")
    r = router_factory(table([version("v1", 1.0, [instance("a", a.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        assert buf.startswith(b"HTTP/1.1 101")
        for gen, a_state in ((2, "draining"), (3, None)):
            insts = [instance("b", b.address)]
            if a_state:
                insts.insert(0, instance("a", a.address, a_state))
            r.write_routes(table([version("v1", 1.0, insts)], generation=gen))
            wait_for(lambda g=gen: r.generation() == g, what=f"generation {gen}")
            s.sendall(b"still here %d" % gen)
            got = b""
            while len(got) < len(b"still here 2"):
                got += s.recv(4096)
            assert got == b"still here %d" % gen
    assert httpx.get(f"{r.url}/").json()["name"] == "b"
