"""CLI errors (one clear line, nothing started) and the API's token gate, in memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from skewless.agent.api import TokenGate
from skewless.agent.instance import AgentOptions
from skewless.agent.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("SKEWLESS_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "skewless", "agent", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--listen", "0.0.0.0:0"), "is not a loopback address: give a --token"),
        (("--listen", "nonsense"), "--listen must be HOST:PORT"),
        (("--ports", "30000-20000"), "--ports must be LOW-HIGH"),
        (("--crash-loop", "often"), "--crash-loop must be N/SECONDS"),
        (("--slots", "-1"), "--slots must be >= 0"),
    ],
)
def test_bad_flags_give_one_clear_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    desired = tmp_path / "desired.json"
    desired.write_text('{"generation": 1, "instances": []}')
    base = [
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(tmp_path / "s"),
        "--desired",
        str(desired),
    ]
    done = run_cli(*base, *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # nothing was started or written


def test_controller_mode_needs_a_host_id(tmp_path: Path) -> None:
    done = run_cli("--state-dir", str(tmp_path / "s"), "--controller", "http://127.0.0.1:9")
    assert done.returncode == 2 and "--host-id is required with --controller" in done.stderr


def test_token_gate_in_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        from skewless.agent.api import build_app
        from skewless.agent.state_dir import StateDir

        sup = Supervisor(StateDir(tmp_path), AgentOptions(host_id="h1"))
        reloads: list[int] = []
        app = build_app(sup, token="t0k", reload=lambda: reloads.append(1), extra_status=dict)
        assert isinstance(app, TokenGate)
        remote = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
        local = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with (
            httpx.AsyncClient(transport=remote, base_url="http://agent") as far,
            httpx.AsyncClient(transport=local, base_url="http://agent") as near,
        ):
            assert (await near.get("/v1/status")).json()["host_id"] == "h1"
            assert (await far.get("/v1/status")).status_code == 401
            auth = {"Authorization": "Bearer t0k"}
            assert (await far.get("/v1/status", headers=auth)).status_code == 200
            assert (await near.post("/v1/reload")).status_code == 401
            assert (await near.post("/v1/reload", headers=auth)).status_code == 202
            assert reloads == [1]
            missing = await near.get("/v1/instances/h1/x/v1/0/logs")
            assert missing.status_code == 404 and "no instance" in missing.json()["error"]
        await sup.aclose()

    asyncio.run(scenario())
