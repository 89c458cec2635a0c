"""The thin commands against a real HTTP server playing the controller: the requests
they send, what they print, and one clear line for each kind of failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skewless.commands import deploy, events, hosts, releases, status
from skewless.commands.action import run_action

from .fake_controller import FakeController, Seen, running

STATUS = {
    "app": "shop",
    "versions": [
        {
            "version": "v1",
            "state": "live",
            "weight": 1.0,
            "instances": [
                {"id": "h1/shop/v1/0", "host": "h1", "state": "ready", "address": "127.0.0.1:9001"}
            ],
        }
    ],
    "rollout": {"state": "succeeded", "strategy": "rolling", "to": "v1", "reason": None},
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKEWLESS_API", raising=False)
    monkeypatch.delenv("SKEWLESS_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake(env: Path) -> Iterator[FakeController]:
    with running(FakeController()) as fc:
        yield fc


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_json_prints_the_controller_answer(
    fake: FakeController, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("GET", "/v1/apps/shop", (200, STATUS))
    assert status.main(["shop", "--json", "--api", fake.url]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_status_human_shows_versions_and_instances(
    fake: FakeController, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("GET", "/v1/apps/shop", (200, STATUS))
    fake.on("GET", "/v1/apps", (200, {"apps": [STATUS]}))
    assert status.main(["shop", "--api", fake.url]) == 0
    out = capsys.readouterr().out
    assert "h1/shop/v1/0" in out and "127.0.0.1:9001" in out and "succeeded" in out
    assert status.main(["--api", fake.url]) == 0
    assert "shop" in capsys.readouterr().out


def test_api_and_token_come_from_current_json(
    fake: FakeController, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = env / "home"
    home.mkdir()
    (home / "current.json").write_text(json.dumps({"api": fake.url, "token": "secret"}))
    fake.on("POST", "/v1/apps/shop/pause", (200, {"rollout": {"state": "paused", "to": "v2"}}))
    assert run_action("pause", ["shop"]) == 0
    assert capsys.readouterr().out.strip() == "shop: rollout to v2 is paused"
    assert fake.seen[-1].headers["authorization"] == "Bearer secret"


def test_env_token_beats_file_and_wrong_token_is_one_clear_line(
    fake: FakeController,
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SKEWLESS_API", fake.url)
    monkeypatch.setenv("SKEWLESS_TOKEN", "wrong")
    fake.on("POST", "/v1/apps/shop/abort", (200, None))
    assert run_action("abort", ["shop"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "skewless abort: controller refused POST /v1/apps/shop/abort (401" in err
    assert "--token or SKEWLESS_TOKEN" in err
    assert run_action("abort", ["shop", "--token", "secret"]) == 0
    assert capsys.readouterr().out.strip() == "shop: aborted"


def test_4xx_message_from_the_controller_is_shown(
    fake: FakeController, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("POST", "/v1/apps/shop/resume", (409, {"error": "shop has no paused rollout"}))
    assert run_action("resume", ["shop", "--api", fake.url, "--token", "secret"]) == 1
    assert capsys.readouterr().err == "skewless resume: shop has no paused rollout (409)\n"


def test_5xx_is_an_upstream_error(fake: FakeController, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/v1/hosts", (500, {"error": "store locked"}))
    assert hosts.main(["--api", fake.url]) == 1
    assert "controller failed on GET /v1/hosts (500: store locked)" in capsys.readouterr().err


def test_unreachable_controller(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert status.main(["--api", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"skewless status: cannot reach the controller at {url}")
    assert err.count("\n") == 1


def test_unreachable_from_a_real_process_has_no_traceback(env: Path) -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    child_env = {**os.environ, "PYTHONPATH": src, "SKEWLESS_API": f"127.0.0.1:{closed_port()}"}
    done = subprocess.run(
        [sys.executable, "-m", "skewless", "rollback", "shop"],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("skewless rollback: cannot reach the controller")


def test_deploy_posts_the_body_with_the_token(
    fake: FakeController, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("POST", "/v1/apps/shop/deploy", (201, {"rollout": {"id": 7, "strategy": "rolling"}}))
    argv = ["shop", "v2", "--command", "python app.py --port {port}", "--instances", "3"]
    assert deploy.main([*argv, "--api", fake.url, "--token", "secret"]) == 0
    sent = fake.seen[-1]
    assert sent.body == {
        "version": "v2",
        "command": ["python", "app.py", "--port", "{port}"],
        "instances": 3,
    }
    assert sent.headers["authorization"] == "Bearer secret"
    assert "deploying shop v2 (rolling)" in capsys.readouterr().out


def test_deploy_uses_skewless_toml_and_a_bad_file_changes_nothing(
    fake: FakeController, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.on("POST", "/v1/apps/shop/deploy", (201, {}))
    (env / "skewless.toml").write_text(
        '[apps.shop]\ncommand = "python app.py {port}"\ninstances = 2\n'
        "[apps.shop.session]\nidle_timeout = 3\n"
    )
    assert deploy.main(["shop", "v1", "--api", fake.url, "--token", "secret"]) == 0
    assert fake.seen[-1].body == {
        "version": "v1",
        "command": ["python", "app.py", "{port}"],
        "instances": 2,
        "session": {"idle_timeout": 3.0},
    }
    (env / "skewless.toml").write_text('[apps.shop]\ncomand = "python app.py {port}"\n')
    count = len(fake.seen)
    assert deploy.main(["shop", "v2", "--api", fake.url, "--token", "secret"]) == 1
    assert "apps.shop.comand is not a known key" in capsys.readouterr().err
    assert len(fake.seen) == count  # nothing was sent


def scripted_rollout(states: list[tuple[str, str | None]]) -> Any:
    """GET /v1/apps/shop answers the next state of the script each time (then the last)."""
    calls = {"n": 0}

    def reply(_seen: Seen) -> tuple[int, Any]:
        state, reason = states[min(calls["n"], len(states) - 1)]
        calls["n"] += 1
        return 200, {
            **STATUS,
            "rollout": {
                "id": 7,
                "state": state,
                "strategy": "rolling",
                "to": "v2",
                "reason": reason,
            },
        }

    return reply


def events_of(fake: FakeController) -> Any:
    """The event log: one old event, and a second one once a deploy was posted."""

    def reply(seen: Seen) -> tuple[int, Any]:
        after = int(seen.query.get("after", ["0"])[0] or 0)
        log = [{"id": 1, "time": 0, "app": "shop", "kind": "deploy", "message": "old"}]
        if any(s.path.endswith("/deploy") for s in fake.seen):
            log.append(
                {"id": 2, "time": 1, "app": "shop", "kind": "rollout", "message": "v2 started"}
            )
        return 200, {"events": [e for e in log if e["id"] > after]}

    return reply


@pytest.mark.parametrize(
    ("script", "code", "needle"),
    [
        ([("pending", None), ("progressing", None), ("succeeded", None)], 0, ""),
        (
            [("progressing", None), ("failed", "h2/shop/v2/0 never became ready")],
            1,
            "rollout of shop v2 ended failed: h2/shop/v2/0 never became ready",
        ),
        ([("progressing", None), ("rolled_back", "5xx rate 12%")], 1, "ended rolled_back"),
    ],
)
def test_deploy_wait_follows_to_the_end(
    fake: FakeController,
    capsys: pytest.CaptureFixture[str],
    script: list[tuple[str, str | None]],
    code: int,
    needle: str,
) -> None:
    fake.on("POST", "/v1/apps/shop/deploy", (201, {"rollout": {"id": 7}}))
    fake.on("GET", "/v1/apps/shop", scripted_rollout(script))
    fake.on("GET", "/v1/events", events_of(fake))
    argv = [
        "shop",
        "v2",
        "--command",
        "app {port}",
        "--wait",
        "--api",
        fake.url,
        "--token",
        "secret",
    ]
    assert deploy.main(argv) == code
    captured = capsys.readouterr()
    assert needle in captured.err
    # Events from before the deploy are not replayed; the ones after are shown.
    assert "v2 started" in captured.out and "old" not in captured.out
    if code == 0:
        assert "rollout succeeded" in captured.out


def test_events_hosts_releases(fake: FakeController, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/v1/events", events_of(fake))
    fake.on("GET", "/v1/hosts", (200, {"hosts": [{"id": "h1", "slots": 4, "alive": True}]}))
    fake.on(
        "GET",
        "/v1/apps/shop/releases",
        (200, {"releases": [{"version": "v1", "command": ["app", "{port}"]}]}),
    )
    assert events.main(["shop", "--api", fake.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in out] == ["old"]
    assert fake.seen[-1].query["app"] == ["shop"]
    assert hosts.main(["--api", fake.url]) == 0
    assert "h1" in capsys.readouterr().out
    assert releases.main(["shop", "--api", fake.url]) == 0
    assert "app {port}" in capsys.readouterr().out


def test_deploy_wait_on_a_terminal_shows_the_live_view(fake: FakeController) -> None:
    import io

    from rich.console import Console

    from skewless.commands.client import Controller, Target
    from skewless.commands.follow import follow_rollout

    fake.on("GET", "/v1/apps/shop", scripted_rollout([("progressing", None), ("succeeded", None)]))
    fake.on("GET", "/v1/events", events_of(fake))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with Controller(Target(api=fake.url, token=None, source="--api")) as api:
        code = follow_rollout(api, app="shop", version="v2", rollout_id=7, console=console)
    assert code == 0
    drawn = screen.getvalue()
    assert "h1/shop/v1/0" in drawn and "127.0.0.1:9001" in drawn  # the instances table
    assert "succeeded" in drawn
