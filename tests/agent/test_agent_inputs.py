"""The agent facing bad or limiting input: artifacts, invalid desired state, slots,
crash loops, start timeouts, and its API token."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import signal
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

FIXTURE = Path(__file__).with_name("app_fixture.py")


def make_artifact(path: Path) -> str:
    """A .tar.gz holding the fixture app as ``app/server.py``; returns its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(FIXTURE, arcname="app/server.py")
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


@contextmanager
def file_server(directory: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_artifacts_good_from_http_and_bad_checksum(agent: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    sha = make_artifact(site / "shop-v2.tar.gz")
    with file_server(site) as base:
        good = agent.instance(0, "v2", artifact={"url": f"{base}/shop-v2.tar.gz", "sha256": sha})
        good["command"] = [sys.executable, "server.py", "--port", "{port}", "--version", "v2"]
        good["cwd"] = "app"
        bad = agent.instance(
            0, "v3", artifact={"url": str(site / "shop-v2.tar.gz"), "sha256": "0" * 64}
        )
        agent.write_desired(1, good, bad)
        agent.start()
        ready = agent.wait_state(good["id"], "ready")
        failed = agent.wait_state(bad["id"], "failed")
    release = agent.state_dir / "releases" / "shop" / "v2"
    answer = httpx.get(f"http://{ready['address']}/").json()
    assert Path(answer["cwd"]).resolve() == (release / "app").resolve()
    assert (release / "app" / "server.py").read_bytes() == FIXTURE.read_bytes()
    assert f"has sha256 {sha}, expected {'0' * 64}" in failed["reason"]
    assert failed["pid"] is None
    # Nothing half-unpacked: no v3 directory, no temporary left over.
    assert sorted(p.name for p in (agent.state_dir / "releases" / "shop").iterdir()) == ["v2"]
    assert not list((agent.state_dir / "releases").glob(".tmp-*"))


def test_invalid_desired_file_keeps_the_last_good_state(agent: Any) -> None:
    spec = agent.instance(0, "v1")
    agent.write_desired(1, spec)
    agent.start()
    ready = agent.wait_state(spec["id"], "ready")
    broken = dict(spec, command=[])
    agent.write_desired(2, broken)
    status = agent.wait_for("the error", lambda: (s := agent.status())["desired_error"] and s)
    assert "instances[0].command must be a non-empty list of strings" in status["desired_error"]
    assert "keeping generation 1" in status["desired_error"]
    assert status["generation"] == 1
    assert agent.instances()[spec["id"]]["pid"] == ready["pid"]
    agent.desired_path.write_text("{not json")
    agent.wait_for(
        "a JSON error", lambda: "not valid JSON" in (agent.status()["desired_error"] or "")
    )
    agent.write_desired(3, spec)
    agent.wait_for(
        "recovery", lambda: (s := agent.status())["generation"] == 3 and not s["desired_error"]
    )
    assert agent.instances()[spec["id"]]["pid"] == ready["pid"]
    assert "instances[0].command" in agent.log.read_text()


def test_slot_limit_refuses_the_extra_instances(agent: Any) -> None:
    a, b, c = agent.instance(0, "v1"), agent.instance(1, "v1"), agent.instance(0, "v2")
    agent.write_desired(1, a, b, c)
    agent.start("--slots", "2")
    agent.wait_state(a["id"], "ready")
    agent.wait_state(b["id"], "ready")
    refused = agent.wait_state(c["id"], "failed")
    assert refused["refused"] is True and refused["pid"] is None
    assert "all 2 slots of this host are in use" in refused["reason"]
    assert agent.pids("v2/0") == []
    # A freed slot goes to the refused instance (level-triggered).
    agent.write_desired(2, a, c)
    agent.wait_state(c["id"], "ready")


def test_crash_loop_is_reported_failed_with_stderr(agent: Any) -> None:
    spec = agent.instance(0, "v1", "--crash")
    agent.write_desired(1, spec)
    agent.start("--backoff-base", "0.05", "--backoff-cap", "0.2", "--crash-loop", "3/60")
    failed = agent.wait_state(spec["id"], "failed")
    assert failed["restarts"] == 3
    assert "crash loop: 4 crashes within 60s" in failed["reason"]
    assert "last one exited with code 3" in failed["reason"]
    assert "boom, cannot start" in failed["reason"]
    assert agent.pids() == []


def test_start_timeout_fails_with_the_stderr_tail(agent: Any) -> None:
    spec = agent.instance(0, "v1", "--unhealthy", start_timeout=1)
    agent.write_desired(1, spec)
    agent.start()
    failed = agent.wait_state(spec["id"], "failed")
    assert "not healthy within its start timeout of 1s" in failed["reason"]
    assert "listening on" in failed["reason"]
    assert failed["health"] is None or failed["health"]["ok"] is False
    assert agent.pids() == []


def test_mutating_calls_need_the_token(agent: Any) -> None:
    agent.write_desired(1)
    agent.start()
    no_token = httpx.post(f"{agent.url}/v1/reload")
    assert no_token.status_code == 403 and "--token" in no_token.json()["error"]
    agent.signal(signal.SIGTERM)
    spec = agent.instance(0, "v1")
    agent.write_desired(2, spec)
    agent.start(env={"SKEWLESS_TOKEN": "s3cret"})
    address = agent.wait_state(spec["id"], "ready")["address"]
    # The agent's token is not handed to the apps it runs; PORT is.
    assert httpx.get(f"http://{address}/env/SKEWLESS_TOKEN").json() is None
    assert httpx.get(f"http://{address}/env/PORT").json() == address.rsplit(":", 1)[1]
    assert httpx.post(f"{agent.url}/v1/reload").status_code == 401
    bad = httpx.post(f"{agent.url}/v1/reload", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = httpx.post(f"{agent.url}/v1/reload", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202
    assert httpx.get(f"{agent.url}/v1/status").status_code == 200


def test_sighup_rereads_the_desired_file(agent: Any) -> None:
    agent.write_desired(1)
    agent.start()
    before = agent.desired_path.stat()
    # Rewrite in place with the same size and times: only SIGHUP can reveal the change.
    text = agent.desired_path.read_text()
    agent.desired_path.write_text(text.replace('"generation": 1', '"generation": 7'))
    os.utime(agent.desired_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert agent.status()["generation"] == 1
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("generation 7", lambda: agent.status()["generation"] == 7)
