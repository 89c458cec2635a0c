"""The agent with real instances: side by side, crash restart, re-adoption, stop, drain."""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx


def get(address: str, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://{address}{path}", timeout=5)


def test_two_versions_side_by_side_then_one_stopped(agent: Any) -> None:
    v1 = agent.instance(0, "v1", "--child", drain_timeout=10)
    v2 = agent.instance(0, "v2", env={"GREETING": "hello"})
    agent.write_desired(1, v1, v2)
    agent.start()
    a = agent.wait_state(v1["id"], "ready")
    b = agent.wait_state(v2["id"], "ready")
    assert a["address"] != b["address"]
    assert agent.status()["generation"] == 1
    one, two = get(a["address"]).json(), get(b["address"]).json()
    assert (one["version"], two["version"]) == ("v1", "v2")
    assert one["pid"] == a["pid"] and two["pid"] == b["pid"]
    # {port} in argv and PORT in the environment are the allocated port; env is passed.
    assert two["port"] == b["address"].rsplit(":", 1)[1] and two["env"] == "hello"
    assert b["health"]["ok"] is True and b["health"]["status"] == 200
    # Both processes (and v1's child) run in their own process groups.
    assert os.getpgid(a["pid"]) == a["pid"] and len(agent.pids("v1/0")) == 2
    logs = httpx.get(f"{agent.url}/v1/instances/{v1['id']}/logs", params={"tail": 5}).json()
    assert any("listening on" in line for line in logs["stderr"])
    assert len(logs["stdout"]) <= 5

    agent.write_desired(2, dict(v1, desired="draining"), v2)
    agent.wait_state(v1["id"], "draining", pid=a["pid"])
    agent.write_desired(3, dict(v1, desired="stopped"), v2)
    stopped = agent.wait_state(v1["id"], "stopped")
    assert stopped["pid"] is None
    stderr = httpx.get(f"{agent.url}/v1/instances/{v1['id']}/logs?stream=stderr").json()
    assert stderr["stderr"][-1] == "fixture v1: got SIGTERM" and "stdout" not in stderr
    assert agent.pids("v1/0") == []  # the whole group, child included
    assert agent.instances()[v2["id"]]["pid"] == b["pid"]

    agent.write_desired(4, v2)
    agent.wait_for("v1 to be forgotten", lambda: v1["id"] not in agent.instances())
    assert get(b["address"]).json()["version"] == "v2"


def test_killed_instance_is_restarted_on_its_port(agent: Any) -> None:
    spec = agent.instance(0, "v1")
    agent.write_desired(1, spec)
    agent.start("--backoff-base", "0.05")
    first = agent.wait_state(spec["id"], "ready")
    os.kill(first["pid"], signal.SIGKILL)
    again = agent.wait_for(
        "a restart",
        lambda: (
            (i := agent.instances()[spec["id"]])["restarts"] == 1 and i["state"] == "ready" and i
        ),
    )
    assert again["pid"] != first["pid"]
    assert again["address"] == first["address"]
    assert get(again["address"]).json()["pid"] == again["pid"]


def test_restarted_agent_readopts_live_instances(agent: Any) -> None:
    a, b = agent.instance(0, "v1"), agent.instance(1, "v1")
    agent.write_desired(1, a, b)
    agent.start()
    ra, rb = agent.wait_state(a["id"], "ready"), agent.wait_state(b["id"], "ready")

    agent.signal(signal.SIGTERM)  # a clean exit leaves instances running
    assert sorted(agent.pids()) == sorted([ra["pid"], rb["pid"]])
    agent.start()
    assert agent.wait_state(a["id"], "ready")["pid"] == ra["pid"]

    agent.kill()  # kill -9 of the agent
    os.kill(rb["pid"], signal.SIGKILL)  # and one instance dies while nobody watches
    agent.wait_for("b to die", lambda: rb["pid"] not in agent.pids())
    agent.start()
    now = agent.instances()
    assert now[a["id"]]["pid"] == ra["pid"] and now[a["id"]]["state"] == "ready"
    assert now[a["id"]]["address"] == ra["address"]
    assert get(ra["address"]).json()["pid"] == ra["pid"]
    # b's record was dropped and b started afresh from the desired state.
    fresh = agent.wait_state(b["id"], "ready")
    assert fresh["pid"] != rb["pid"]


def test_drain_timeout_ends_in_sigkill(agent: Any) -> None:
    spec = agent.instance(0, "v1", "--ignore-term", drain_timeout=0.5)
    agent.write_desired(1, spec)
    agent.start()
    ready = agent.wait_state(spec["id"], "ready")
    agent.write_desired(2, dict(spec, desired="stopped"))
    agent.wait_state(spec["id"], "stopped")
    assert ready["pid"] not in agent.pids()
    assert agent.pids() == []
    # It was asked politely first, ignored it, and was killed after the drain timeout.
    logs = httpx.get(f"{agent.url}/v1/instances/{spec['id']}/logs", params={"tail": 1}).json()
    assert logs["stderr"] == ["fixture v1: got SIGTERM"]


def test_stop_instances_on_exit(agent: Any) -> None:
    spec = agent.instance(0, "v1")
    agent.write_desired(1, spec)
    agent.start("--stop-instances-on-exit")
    agent.wait_state(spec["id"], "ready")
    agent.signal(signal.SIGTERM)
    assert agent.pids() == []
