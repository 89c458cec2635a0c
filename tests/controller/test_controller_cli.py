"""``skewless controller`` refuses unsafe or malformed options with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from skewless.controller.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "0.0.0.0:7000"], "refusing to listen on 0.0.0.0 without a token"),
        (["--listen", "7000"], "--listen must look like 127.0.0.1:7000"),
        (["--store", "postgresql://db/skewless"], "PostgreSQL store is not available yet"),
        (["--store", "mysql://x"], "--store must look like sqlite:///PATH"),
        (["--planner", "no.such.module:plan"], "--planner no.such.module:plan"),
        (["--events-kept", "0"], "--events-kept must be at least 1"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SKEWLESS_TOKEN", raising=False)
    assert main([*argv, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_second_controller_on_the_same_store_is_refused(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "skewless", "controller", "--listen", "127.0.0.1:0"]
    first = subprocess.Popen(
        [*cmd, "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert first.stdout is not None and "listening on" in first.stdout.readline()
        second = subprocess.run(
            [*cmd, "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert second.returncode == 1
        assert "another controller is using" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        first.stdout.close()  # type: ignore[union-attr]
