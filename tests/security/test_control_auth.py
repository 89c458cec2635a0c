"""Tokens and listeners of the control plane, against real processes on 127.0.0.1:
every mutating call of the controller and the agent needs the token; a missing, wrong or
mangled token changes nothing; listeners bind loopback by default and refuse another
address without a token (one line on stderr, exit non-zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_control_procs import TOKEN, Controller, env, wait_for

DEPLOY = {"version": "v1", "command": ["python", "-m", "http.server", "{port}"]}
MUTATING = [
    ("/v1/apps/shop/deploy", DEPLOY),
    ("/v1/apps/shop/pause", None),
    ("/v1/apps/shop/resume", None),
    ("/v1/apps/shop/abort", None),
    ("/v1/apps/shop/rollback", {"broken": True}),
    ("/v1/hosts/h1/report", {"host_id": "h1", "slots": 4, "generation": 0, "instances": []}),
    ("/v1/routers/r1/report", {"router_id": "r1", "generation": 1, "apps": [], "instances": []}),
]
BAD_AUTH = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer  x"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": f"Bearer {TOKEN.upper()}"},
]


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    c = Controller(tmp_path, quiet_planner=True)
    try:
        yield c
    finally:
        c.stop()


def test_every_mutating_call_needs_the_token_and_a_refused_one_changes_nothing(
    controller: Controller,
) -> None:
    with httpx.Client(base_url=controller.url, timeout=10) as c:
        # Something to pause, abort and roll back, so that refusals are not mere 404s.
        assert (
            c.post("/v1/apps/shop/deploy", json=DEPLOY, headers=controller.headers()).status_code
            == 201
        )
        wait_for(
            "the engine to start the rollout",
            lambda: controller.views()["apps"]["apps"][0]["rollout"]["state"] != "pending",
        )
        before, views = controller.dump(), controller.views()
        for path, body in MUTATING:
            for headers in BAD_AUTH:
                r = c.post(path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code, r.text)
                assert "token" in r.json()["error"]
        # Bodies are not even read: a garbage body without a token is a 401, not a 400.
        r = c.post("/v1/apps/shop/deploy", content=b"\x00{not json")
        assert r.status_code == 401
        for method in ("PUT", "DELETE", "PATCH"):
            assert c.request(method, "/v1/apps/shop").status_code == 401
        assert controller.dump() == before
        assert controller.views() == views
        # GETs from loopback need no token.
        for path in ("/v1/apps", "/v1/apps/shop", "/v1/hosts", "/v1/events", "/v1/routes"):
            assert c.get(path).status_code == 200, path
        # The right token works.
        r = c.post("/v1/apps/shop/pause", headers=controller.headers())
        assert r.status_code == 200, r.text


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.controller import api
    from skewless.controller.store_sqlite import open_store

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", spy)
    store = open_store("sqlite:///:memory:")
    app = api.create_app(store, token=TOKEN, run_engine=False)

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as c:
            return [
                (
                    await c.post("/v1/apps/x/pause", headers={"Authorization": "Bearer nope"})
                ).status_code,
                (await c.get("/v1/apps")).status_code,  # not loopback: GETs need it too
                (await c.get("/v1/apps", headers={"Authorization": f"Bearer {TOKEN}"})).status_code,
            ]

    try:
        assert asyncio.run(go()) == [401, 401, 200]
    finally:
        store.close()
    assert (b"nope", TOKEN.encode()) in calls
    assert (TOKEN.encode(), TOKEN.encode()) in calls


def test_a_controller_without_a_token_makes_one_and_still_refuses_strangers(
    tmp_path: Path,
) -> None:
    c = Controller(tmp_path, token=None, quiet_planner=True)
    try:
        token_file = tmp_path / "state" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        made = token_file.read_text().strip()
        assert len(made) >= 32
        assert any(str(token_file) in line for line in c.lines), c.lines
        r = httpx.post(f"{c.url}/v1/apps/shop/deploy", json=DEPLOY, timeout=10)
        assert r.status_code == 401
        assert c.dump()["apps"] == []
        r = httpx.post(
            f"{c.url}/v1/apps/shop/deploy",
            json=DEPLOY,
            headers={"Authorization": f"Bearer {made}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
    finally:
        c.stop()
    again = Controller(tmp_path, token=None, quiet_planner=True)
    try:  # the same token across restarts: routers and agents keep working
        assert (tmp_path / "state" / "token").read_text().strip() == made
        r = httpx.post(
            f"{again.url}/v1/apps/shop/pause",
            headers={"Authorization": f"Bearer {made}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    finally:
        again.stop()


# ---- listeners --------------------------------------------------------------------------


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skewless", *args],
        capture_output=True,
        text=True,
        env=env(SKEWLESS_HOME=str(tmp / "home")),
        timeout=60,
        cwd=tmp,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["controller", "--listen", "0.0.0.0:0"], "refusing to listen on 0.0.0.0 without a token"),
        (["controller", "--listen", "[::]:0"], "refusing to listen on :: without a token"),
        (["agent", "--listen", "0.0.0.0:0", "--desired", "d.json"], "not a loopback address"),
        (
            ["router", "--listen", "127.0.0.1:0", "--routes", "r.json", "--admin", "0.0.0.0:0"],
            "is not a loopback address",
        ),
        (
            ["router", "--listen", "127.0.0.1:0", "--routes", "r.json", "--admin", ":0"],
            "is not a loopback address",
        ),
    ],
)
def test_a_listener_on_another_address_without_a_token_is_refused(
    tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "d.json").write_text('{"generation": 0, "instances": []}')
    (tmp_path / "r.json").write_text('{"generation": 1, "apps": []}')
    if args[0] == "agent":
        args = [*args, "--state-dir", str(tmp_path / "agent")]
    if args[0] == "controller":
        args = [*args, "--state-dir", str(tmp_path / "c")]
    done = _run(args, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert "token" in lines[0].lower()
    assert not (tmp_path / "c" / "token").exists()  # refused before anything was made


def test_listeners_default_to_loopback() -> None:
    from skewless.agent import cli as agent_cli
    from skewless.controller import cli as controller_cli
    from skewless.router import cli as router_cli

    assert controller_cli.parse_listen(":7000") == ("127.0.0.1", 7000)
    controller_defaults = _defaults(controller_cli.main)
    assert controller_defaults["listen"] == "127.0.0.1:7000"
    agent_defaults = {a.dest: a.default for a in agent_cli._parser()._actions}
    assert agent_defaults["listen"] == "127.0.0.1:7070"
    router_args = router_cli.parse_args(["--routes", "r.json"])
    assert router_args.admin is None  # no admin listener unless asked for


def _defaults(main: Any) -> dict[str, Any]:
    """The defaults of a ``main(argv)`` that builds its parser inside: run ``--help``-free
    by catching the parser it makes."""
    import argparse

    seen: dict[str, Any] = {}
    real = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        seen.update({a.dest: a.default for a in self._actions})
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        with contextlib.suppress(SystemExit):
            main([])
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
    return seen


# ---- the agent ---------------------------------------------------------------------------


@contextlib.contextmanager
def agent(tmp: Path, token: str | None) -> Iterator[str]:
    (tmp / "desired.json").write_text(json.dumps({"generation": 0, "instances": []}))
    args = [
        sys.executable, "-m", "skewless", "agent", "--listen", "127.0.0.1:0",
        "--state-dir", str(tmp / "agent"), "--desired", str(tmp / "desired.json"),
    ]  # fmt: skip
    if token:
        args += ["--token", token]
    proc = subprocess.Popen(
        args, env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def url() -> str | None:
            assert proc.poll() is None, lines
            m = next((re.search(r"listening on (http://[\d.]+:\d+)", x) for x in lines), None)
            return m.group(1) if m else None

        yield wait_for("the agent to listen", url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(5)
        if proc.stderr:
            proc.stderr.close()


def test_the_agents_mutating_calls_need_its_token(tmp_path: Path) -> None:
    with agent(tmp_path, TOKEN) as url:
        for headers in BAD_AUTH:
            r = httpx.post(f"{url}/v1/reload", headers=headers, timeout=10)
            assert r.status_code == 401, (headers, r.status_code, r.text)
        for method in ("PUT", "DELETE"):
            assert httpx.request(method, f"{url}/v1/status", timeout=10).status_code == 401
        assert httpx.get(f"{url}/v1/status", timeout=10).status_code == 200
        r = httpx.post(f"{url}/v1/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 202, r.text


def test_an_agent_without_a_token_refuses_every_mutating_call(tmp_path: Path) -> None:
    with agent(tmp_path, None) as url:
        r = httpx.post(f"{url}/v1/reload", headers={"Authorization": "Bearer anything"}, timeout=10)
        assert r.status_code == 403
        assert "no token" in r.json()["error"]
        assert httpx.get(f"{url}/v1/status", timeout=10).status_code == 200


def test_the_router_admin_answers_strangers_only_with_the_token() -> None:
    from skewless.router.admin import build_app

    server = SimpleNamespace(draining=False, table=SimpleNamespace(generation=3))

    async def go(client: tuple[str, int], headers: dict[str, str]) -> int:
        transport = httpx.ASGITransport(app=build_app(server, TOKEN), client=client)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9") as c:
            return (await c.get("/healthz", headers=headers)).status_code

    assert asyncio.run(go(("10.0.0.9", 1), {})) == 401
    assert asyncio.run(go(("10.0.0.9", 1), {"Authorization": "Bearer nope"})) == 401
    assert asyncio.run(go(("10.0.0.9", 1), {"Authorization": f"Bearer {TOKEN}"})) == 200
    assert asyncio.run(go(("127.0.0.1", 1), {})) == 200


def test_a_loopback_get_under_a_foreign_host_name_needs_the_token(
    controller: Controller,
) -> None:
    """DNS rebinding: a web page reaches 127.0.0.1 through a name it controls; its
    requests carry that name as Host and get no tokenless read of the control plane."""
    port = controller.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=controller.url, timeout=10) as c:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            r = c.get("/v1/routes", headers={"Host": host})
            assert r.status_code == 401, (host, r.status_code)
            assert (
                c.get("/v1/apps", headers={"Host": host, **controller.headers()}).status_code == 200
            )
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert c.get("/v1/routes", headers={"Host": host}).status_code == 200, host


def test_the_router_admin_refuses_a_foreign_host_name_from_loopback() -> None:
    from skewless.router.admin import build_app

    server = SimpleNamespace(draining=False, table=SimpleNamespace(generation=3))

    async def go(base: str) -> int:
        transport = httpx.ASGITransport(app=build_app(server, TOKEN), client=("127.0.0.1", 1))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=base) as c:
            return (await c.get("/healthz")).status_code

    assert asyncio.run(go("http://evil.example:8081")) == 401
    assert asyncio.run(go("http://127.0.0.1:8081")) == 200
    assert asyncio.run(go("http://localhost:8081")) == 200
