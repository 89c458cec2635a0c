"""Invalid release specs and CLI input: a clear message naming the field, and nothing
changed (every row of the controller's store compared before and after), through the
real ``skewless deploy`` command and through the HTTP API, against a real controller.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_control_procs import TOKEN, Controller, env, wait_for

GOOD = {"version": "v1", "command": ["python", "app.py", "--port", "{port}"]}


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("input"), quiet_planner=True)
    try:
        r = httpx.post(f"{c.url}/v1/apps/shop/deploy", json=GOOD, headers=c.headers(), timeout=10)
        assert r.status_code == 201, r.text
        wait_for(
            "the first rollout to start",
            lambda: c.views()["apps"]["apps"][0]["rollout"]["state"] != "pending",
        )
        yield c
    finally:
        c.stop()


def deploy(controller: Controller, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skewless", "deploy", *args],
        capture_output=True,
        text=True,
        env=env(SKEWLESS_API=controller.url, SKEWLESS_TOKEN=TOKEN, SKEWLESS_HOME=str(tmp / "home")),
        cwd=tmp,
        timeout=60,
    )


CMD = ["--command", "python app.py --port {port}"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["shop", "v2", "--command", "python app.py"], "--command"),
        (["shop", "v2", *CMD, "--health", "healthz"], "--health"),
        (["shop", "v2", *CMD, "--instances", "0"], "--instances"),
        (["shop", "v2", *CMD, "--instances", "many"], "--instances"),
        (["shop", "v2", *CMD, "--strategy", "yolo"], "--strategy"),
        (["shop", "v2", *CMD, "--batch", "-1"], "--batch"),
        (["shop", "v2", *CMD, "--batch", "250%"], "--batch"),
        (["shop", "v2", *CMD, "--session-idle-timeout", "-5"], "--session-idle-timeout"),
        (["shop", "v2", *CMD, "--capacity", "abc"], "--capacity"),
        (["shop", "v2", *CMD, "--steps", "0.5,0.1"], "steps"),
        (["shop", "v2", *CMD, "--env", "NOEQUALS"], "--env"),
        (
            ["shop", "v2", *CMD, "--session-idle-timeout", "100", "--session-max-lifetime", "10"],
            "max_lifetime",
        ),
        (["sh op", "v2", *CMD], "APP"),
        (["shop", "v 2", *CMD], "VERSION"),
        (["shop", "v1", "--command", "python other.py {port}"], "v1"),  # v1 exists, other spec
    ],
)
def test_bad_deploy_flags_get_a_clear_message_and_change_nothing(
    controller: Controller, tmp_path: Path, args: list[str], words: str
) -> None:
    before = controller.dump()
    done = deploy(controller, tmp_path, *args)
    assert done.returncode != 0, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("skewless deploy:"), done.stderr
    assert words.lower() in last.lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert controller.dump() == before


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({**GOOD, "command": ["python", "app.py"]}, "command"),
        ({**GOOD, "command": []}, "command"),
        ({**GOOD, "command": "python app.py {port}"}, "command"),
        ({**GOOD, "version": ""}, "version"),
        ({**GOOD, "version": "../etc"}, "version"),
        ({"command": GOOD["command"]}, "version"),
        ({**GOOD, "health": {"path": "healthz"}}, "health.path"),
        ({**GOOD, "health": {"status": 99}}, "health.status"),
        ({**GOOD, "instances": 0}, "instances"),
        ({**GOOD, "instances": True}, "instances"),
        ({**GOOD, "instances": 10**9}, "instances"),
        ({**GOOD, "strategy": "yolo"}, "strategy"),
        ({**GOOD, "batch": "250%"}, "batch"),
        ({**GOOD, "steps": [0.5, 0.1]}, "steps"),
        ({**GOOD, "capacity": -1}, "capacity"),
        ({**GOOD, "capacity": float("inf")}, "capacity"),
        ({**GOOD, "session": {"idle_timeout": 100, "max_lifetime": 10}}, "max_lifetime"),
        ({**GOOD, "session": {"idle_timeout": "forever"}}, "idle_timeout"),
        ({**GOOD, "env": {"A": 1}}, "env"),
        ({**GOOD, "smoke": [{"status": 200}]}, "smoke"),
        ({**GOOD, "colour": "blue"}, "colour"),
        ([GOOD], "object"),
        ("v2", "object"),
    ],
)
def test_bad_release_specs_get_400_naming_the_field_and_change_nothing(
    controller: Controller, body: object, words: str
) -> None:
    before = controller.dump()
    import json

    try:
        content = json.dumps(body, allow_nan=True)
    except ValueError:
        content = str(body)
    r = httpx.post(
        f"{controller.url}/v1/apps/shop/deploy",
        content=content,
        headers={**controller.headers(), "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400, (r.status_code, r.text)
    message = r.json()["error"]
    assert words.lower() in message.lower(), message
    assert controller.dump() == before


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b"null", b'{"version": "v2", "command": ["x {port}"]' + b" " * 10],
)
def test_unparsable_bodies_get_400_and_change_nothing(
    controller: Controller, content: bytes
) -> None:
    before = controller.dump()
    r = httpx.post(
        f"{controller.url}/v1/apps/shop/deploy",
        content=content,
        headers=controller.headers(),
        timeout=10,
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["error"]
    assert controller.dump() == before


ROUTER_REPORT = {"router_id": "r9", "generation": 1, "apps": [], "instances": []}
AGENT_REPORT = {"host_id": "h9", "slots": 2, "generation": 0, "instances": []}


@pytest.mark.parametrize(
    ("path", "content", "words"),
    [
        # Found by the schemathesis run: SQLite cannot hold it (was a 500).
        ("/v1/events?after=9223372036854775808", None, "after"),
        # Would poison the planner (ceil(inf) raises, and every engine step with it).
        (
            "/v1/routers/r9/report",
            '{"generation": 1, "apps": [{"app": "shop", "versions": [{"version": "v1", "rps": 1e308}]}]}',
            "rps",
        ),
        (
            "/v1/routers/r9/report",
            '{"generation": 1, "apps": [{"app": "shop", "versions": [{"version": "v1", "rps": NaN}]}]}',
            "rps",
        ),
        (
            "/v1/routers/r9/report",
            '{"generation": 1, "apps": [{"app": "shop", "versions": [{"version": "v1", "requests": 1e400}]}]}',
            "requests",
        ),
        ("/v1/routers/r9/report", '{"generation": 99999999999999999999999}', "generation"),
        ("/v1/hosts/h9/report", '{"generation": -1}', "generation"),
        ("/v1/hosts/h9/report", '{"instances": [{"id": "x", "pid": 1e400}]}', "pid"),
        ("/v1/hosts/h9/report", '{"host_id": "other"}', "host_id"),
        ("/v1/routers/r9/report", '{"router_id": "other", "generation": 1}', "router_id"),
    ],
)
def test_out_of_range_reports_and_queries_get_400_and_change_nothing(
    controller: Controller, path: str, content: str | None, words: str
) -> None:
    before = controller.dump()
    if content is None:
        r = httpx.get(f"{controller.url}{path}", timeout=10)
    else:
        r = httpx.post(
            f"{controller.url}{path}",
            content=content,
            headers={**controller.headers(), "Content-Type": "application/json"},
            timeout=10,
        )
    assert r.status_code == 400, (r.status_code, r.text)
    assert words in r.json()["error"], r.json()
    assert controller.dump() == before
