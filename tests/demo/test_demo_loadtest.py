"""The load generator against real wizard processes: clean on one version, and it catches
the skew of a proxy without affinity (this is what proves the control run can fail)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from skewless.demo import loadtest
from skewless.demo.loadtest import ConfigProblem, LoadConfig, Recorder, run_load

Wizard = Callable[[str], str]


def test_one_version_gives_completed_sessions_and_exit_0(
    wizard: Wizard, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = wizard("v1")
    code = loadtest.main(
        [
            f"http://{addr}/",
            "--users",
            "4",
            "--duration",
            "30",
            "--sessions",
            "12",
            "--think",
            "0.01",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["sessions_started"] == 12
    assert report["sessions_completed"] == 12
    assert report["mixed_sessions"] == 0 and report["errors"] == 0
    # landing + start + 3 x (GET page, POST page) + done = 9 requests per visit
    assert report["requests"] == 12 * 9
    assert report["versions"] == {"v1": 12 * 9}
    assert report["latency_ms"]["p50"] is not None
    assert sum(sum(b["versions"].values()) for b in report["timeline"]) == 12 * 9


def test_round_robin_over_two_versions_shows_mixed_sessions_and_4xx(
    wizard: Wizard, round_robin: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    rr = round_robin(wizard("v1"), wizard("v2"))
    # One user, so the proxy strictly alternates: page 2 is always shown by one version
    # and posted to the other.
    code = loadtest.main(
        [
            f"http://{rr}/",
            "--users",
            "1",
            "--duration",
            "30",
            "--sessions",
            "9",
            "--think",
            "0",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["mixed_sessions"] == report["sessions_started"] == 9
    assert report["sessions_completed"] == 0
    assert report["errors_by_status"] == {"422": 9}
    assert report["errors"] == 9  # each visit fails once, then starts over
    assert set(report["versions"]) == {"v1", "v2"}
    assert not report["ok"]


def test_a_dead_target_counts_connect_errors_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = loadtest.main(
        [
            f"http://127.0.0.1:{port}/",
            "--users",
            "2",
            "--duration",
            "30",
            "--sessions",
            "4",
            "--think",
            "0",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["errors_by_status"] == {"connect_error": 4}


def test_stop_event_ends_a_run_from_python_and_recorder_reads_windows(wizard: Wizard) -> None:
    addr = wizard("v2")

    async def scenario() -> tuple[int, int]:
        stop = asyncio.Event()
        rec = Recorder()
        config = LoadConfig(url=f"http://{addr}/", users=3, duration=60, think=0.01)
        run = asyncio.create_task(run_load(config, stop=stop, recorder=rec))
        deadline = asyncio.get_running_loop().time() + 30
        while rec.completed < 5:
            assert asyncio.get_running_loop().time() < deadline, "no sessions completed"
            await asyncio.sleep(0.05)
        stop.set()
        summary = await run
        window = rec.summary(start=0.0, end=rec.now())
        assert rec.completed == summary.sessions_completed
        assert rec.errors == summary.errors == 0 and rec.mixed == 0
        assert "serving: v2" in rec.progress()
        return summary.sessions_completed, window.requests - summary.requests

    completed, difference = asyncio.run(scenario())
    assert completed >= 5
    assert difference == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["http://example.com/", "--users", "1", "--duration", "1"], "not a loopback address"),
        (["http://127.0.0.1:1/", "--users", "0", "--duration", "1"], "--users must be"),
        (["http://127.0.0.1:1/", "--users", "1", "--duration", "0"], "--duration must be"),
        (["ftp://127.0.0.1/", "--users", "1", "--duration", "1"], "URL must look like"),
        (["http://[::1]:1/", "--users", "1", "--duration", "1", "--rate", "-1"], "--rate must"),
    ],
)
def test_bad_options_exit_2_with_the_fix_and_send_nothing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert loadtest.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err[-1] == "\n" and err.count("\n") == 1


def test_run_load_refuses_remote_targets_unless_allowed() -> None:
    config = LoadConfig(url="http://10.0.0.1/", users=1, duration=1)
    with pytest.raises(ConfigProblem, match="--allow-remote"):
        asyncio.run(run_load(config))
    loadtest.check_config(
        LoadConfig(url="http://10.0.0.1/", users=1, duration=1, allow_remote=True)
    )


def test_rate_caps_requests_and_the_table_names_every_figure(
    wizard: Wizard, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = wizard("v1")
    code = loadtest.main(
        [f"http://{addr}/", "--users", "4", "--duration", "1.5", "--rate", "10", "--think", "0"]
    )
    out = capsys.readouterr().out
    assert code == 0
    requests = int(next(line for line in out.splitlines() if "│ requests" in line).split()[-2])
    # Request starts are spaced 1/rate apart: at most rate x duration, + 1 per user whose
    # slot came up as the run ended.
    assert 0 < requests <= 10 * 1.5 + 1 + 4
    for figure in (
        "sessions started",
        "mixed-version sessions",
        "failed requests",
        "latency p50 / p99",
        "versions seen over time",
    ):
        assert figure in out
