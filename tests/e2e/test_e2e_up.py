"""`skewless up` end to end: parts ready, files written, the thin commands work against
the real controller, and SIGTERM leaves no process behind (instances included)."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .e2e_fleet import Fleet, free_port, running_fleet, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc"),
]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path, hosts=2, slots=3) as f:
        yield f


def test_up_runs_a_fleet_and_the_commands_drive_it(fleet: Fleet) -> None:
    # Files: current.json points at this fleet; secrets are private.
    current = json.loads((fleet.home / "current.json").read_text())
    assert current == {"api": fleet.api, "token": fleet.token, "http": fleet.http}
    for path in (fleet.home / "current.json", fleet.state / "token", fleet.state / "keys.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert fleet.api in fleet.log() and fleet.http in fleet.log()

    # A second `up` on the same state dir (other ports) is refused and starts nothing.
    again = fleet.cli(
        "up", "--hosts", "1", "--http", f"127.0.0.1:{free_port()}",
        "--api", f"127.0.0.1:{free_port()}", "--state", str(fleet.state),
    )  # fmt: skip
    assert again.returncode == 1
    assert (
        f"another skewless up (pid {fleet.proc.pid if fleet.proc else 0}) runs on it"
        in again.stderr
    )

    hosts = fleet.cli("hosts", "--json")
    assert hosts.returncode == 0, hosts.stderr
    assert "h1" in hosts.stdout and "h2" in hosts.stdout

    done = fleet.deploy("shop", "v1", "--instances", "2")
    assert done.returncode == 0, done.stdout + done.stderr + fleet.part_log("controller")
    wait_for("v1 to answer through the router", lambda: fleet.serves("v1"), timeout=30)

    status = json.loads(fleet.cli("status", "shop", "--json").stdout)
    assert status["app"] == "shop"
    (v1,) = [v for v in status["versions"] if v["version"] == "v1"]
    assert v1["state"] == "live" and v1["weight"] == 1.0
    assert len(v1["instances"]) == 2
    assert {i["state"] for i in v1["instances"]} == {"ready"}
    assert all(i["address"].startswith("127.0.0.1:") for i in v1["instances"])
    assert status["rollout"]["to"] == "v1" and status["rollout"]["state"] == "succeeded"

    human = fleet.cli("status", "shop")
    assert human.returncode == 0 and "v1" in human.stdout
    assert fleet.cli("releases", "shop").returncode == 0
    events = fleet.cli("events", "shop")
    assert events.returncode == 0 and events.stdout.strip()

    # A mutating call without the token is refused and changes nothing.
    r = httpx.post(f"{fleet.api}/v1/apps/shop/rollback", timeout=10)
    assert r.status_code in (401, 403)
    assert "error" in r.json()
    assert fleet.version_state("shop", "v1") == "live"

    # Instances are running; after SIGTERM to `up` nothing is (checked by the fixture too).
    instances = [cmd for cmd in fleet.leftovers().values() if "e2e_tinyapp.py" in cmd]
    assert len(instances) == 2
    assert fleet.stop() == 0
    assert fleet.leftovers() == {}
    assert not (fleet.home / "current.json").exists()


def test_up_restarts_a_killed_part(fleet: Fleet) -> None:
    router = fleet.parts()["router"]["pid"]
    os.kill(router, signal.SIGKILL)
    wait_for(
        "up to restart the router",
        lambda: (
            fleet.parts()["router"]["pid"] != router and fleet.parts()["router"]["restarts"] == 1
        ),
        timeout=30,
    )
    assert "router killed by SIGKILL; restarting it" in fleet.log()
    wait_for("the new router to answer", lambda: httpx.get(fleet.http, timeout=2), timeout=30)


def test_deploy_wait_fails_with_the_reason(fleet: Fleet) -> None:
    assert fleet.deploy("shop", "v1", "--instances", "2").returncode == 0
    # v2's smoke check gets a 500: the rollout fails, v1 keeps serving.
    done = fleet.deploy("shop", "v2", "--instances", "2", "--smoke", "/status/500")
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("skewless deploy: rollout of shop v2 ended failed: "), last
    assert "smoke" in last and "500" in last, last
    assert "Traceback" not in done.stderr
    assert fleet.serves("v1")
    assert json.loads(fleet.cli("status", "shop", "--json").stdout)["rollout"]["state"] == "failed"


def test_up_after_a_killed_up_cleans_up_and_starts(fleet: Fleet) -> None:
    assert fleet.deploy("shop", "v1", "--instances", "2").returncode == 0
    assert fleet.proc is not None
    os.kill(fleet.proc.pid, signal.SIGKILL)  # `up` gets no chance to stop its parts
    fleet.proc.wait(timeout=10)
    assert fleet.leftovers()  # its parts and instances still run, holding the ports
    fleet.start()  # same ports, same state dir
    assert "left running by a skewless up that died" in fleet.log()
    # The store survived: the app is back on the new fleet.
    wait_for("v1 to answer again", lambda: fleet.serves("v1"), timeout=60)
