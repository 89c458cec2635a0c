"""deploy: flags over skewless.toml defaults into the request body (pure)."""

from __future__ import annotations

import pytest

from skewless.commands.config import AppDefaults
from skewless.commands.deploy import build_body, parser
from skewless.core.errors import ConfigError


def body(argv: list[str], defaults: AppDefaults | None = None) -> dict[str, object]:
    return build_body(parser().parse_args(argv), defaults or AppDefaults())


def test_all_flags_make_the_contract_body() -> None:
    got = body(
        [
            "shop", "v2", "--command", "python -m shop --port {port} --title 'a b'",
            "--health", "/up", "--instances", "4", "--strategy", "side-by-side",
            "--batch", "2", "--session-idle-timeout", "3", "--session-max-lifetime", "60",
            "--capacity", "20", "--smoke", "/", "--smoke", "/signup",
            "--max-unavailable", "1", "--max-surge", "2", "--steps", "0.1,0.5,1",
            "--env", "A=1", "--env", "B=x=y", "--drain-timeout", "5",
        ]
    )  # fmt: skip
    assert got == {
        "version": "v2",
        "command": ["python", "-m", "shop", "--port", "{port}", "--title", "a b"],
        "env": {"A": "1", "B": "x=y"},
        "health": {"path": "/up"},
        "smoke": [{"path": "/", "status": 200}, {"path": "/signup", "status": 200}],
        "instances": 4,
        "strategy": "side-by-side",
        "batch": 2,
        "capacity": 20.0,
        "max_unavailable": 1,
        "max_surge": 2,
        "drain_timeout": 5.0,
        "steps": [0.1, 0.5, 1.0],
        "session": {"idle_timeout": 3.0, "max_lifetime": 60.0},
    }


def test_minimal_body_leaves_defaults_to_the_controller() -> None:
    assert body(["shop", "v1", "--command", "app {port}"]) == {
        "version": "v1",
        "command": ["app", "{port}"],
    }


def test_flags_override_file_defaults() -> None:
    defaults = AppDefaults(
        command=("python", "old.py", "{port}"),
        instances=2,
        strategy="rolling",
        env={"A": "file", "B": "file"},
        session_idle_timeout=1800.0,
        session_pin=True,
    )
    got = body(
        ["shop", "v3", "--instances", "3", "--env", "A=flag", "--session-idle-timeout", "5"],
        defaults,
    )
    assert got["command"] == ["python", "old.py", "{port}"]
    assert got["instances"] == 3
    assert got["strategy"] == "rolling"
    assert got["env"] == {"A": "flag", "B": "file"}
    assert got["session"] == {"idle_timeout": 5.0, "pin": True}


def test_counts_and_steps_take_percentages() -> None:
    got = body(
        ["shop", "v1", "--command", "a {port}", "--batch", "25%", "--max-unavailable", "0",
         "--max-surge", "50%", "--steps", "10%,50%,100%"]
    )  # fmt: skip
    assert (got["batch"], got["max_unavailable"], got["max_surge"]) == ("25%", 0, "50%")
    assert got["steps"] == [0.1, 0.5, 1.0]


def test_no_pin_turns_pinning_off() -> None:
    assert body(["shop", "v1", "--command", "a {port}", "--no-pin"])["session"] == {"pin": False}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["shop", "v1"], "--command is required"),
        (["shop", "v1", "--command", "python app.py"], "--command must contain {port}"),
        (["shop", "v1", "--command", "a 'b {port}"], "--command cannot be split"),
        (["sh op", "v1", "--command", "a {port}"], "APP 'sh op'"),
        (["shop", "v/1", "--command", "a {port}"], "VERSION 'v/1'"),
        (["shop", "v1", "--command", "a {port}", "--instances", "0"], "--instances must be >= 1"),
        (
            ["shop", "v1", "--command", "a {port}", "--batch", "0"],
            "--batch must be an integer >= 1",
        ),
        (
            ["shop", "v1", "--command", "a {port}", "--batch", "x"],
            "--batch must be a count or a percentage",
        ),
        (
            ["shop", "v1", "--command", "a {port}", "--max-surge", "150%"],
            "--max-surge must be a count",
        ),
        (["shop", "v1", "--command", "a {port}", "--capacity", "0"], "--capacity must be > 0"),
        (["shop", "v1", "--command", "a {port}", "--health", "up"], "--health must be a path"),
        (["shop", "v1", "--command", "a {port}", "--env", "NOEQ"], "--env 'NOEQ' must look like"),
        (["shop", "v1", "--command", "a {port}", "--steps", "0.5,0.2"], "--steps must increase"),
        (
            ["shop", "v1", "--command", "a {port}", "--steps", "x"],
            "--steps must be shares separated by commas",
        ),
    ],
)
def test_bad_flags_are_named(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        body(argv)
    assert needle in str(info.value)


def test_unknown_strategy_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["shop", "v1", "--strategy", "canary"])
    assert info.value.code == 2
    assert "--strategy" in capsys.readouterr().err
