"""The controller's HTTP API over a real uvicorn on 127.0.0.1 (the engine is not running)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from controller_fakes import ServerThread

from skewless.controller.api import create_app
from skewless.controller.store_sqlite import SqliteStore

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEPLOY = {"version": "v1", "command": ["python", "-m", "app", "--port", "{port}"], "instances": 2}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(tmp_path: Path, clock: Clock) -> Iterator[httpx.Client]:
    store = SqliteStore(tmp_path / "c.db")
    app = create_app(store, token=TOKEN, clock=clock, run_engine=False)
    try:
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
            yield c
    finally:
        store.close()


def test_mutating_calls_need_the_token(client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
        r = client.post("/v1/apps/shop/deploy", json=DEPLOY, headers=headers)
        assert r.status_code == 401
        assert "token" in r.json()["error"]
    r = client.post("/v1/hosts/h1/report", json={"host_id": "h1", "slots": 2})
    assert r.status_code == 401
    assert client.get("/v1/apps").json() == {
        "apps": []
    }  # nothing changed; GET from loopback is free


def test_deploy_creates_app_release_and_pending_rollout(client: httpx.Client) -> None:
    r = client.post("/v1/apps/shop/deploy", json=DEPLOY, headers=AUTH)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["rollout"]["state"] == "pending"
    assert (body["rollout"]["to"], body["rollout"]["from"], body["rollout"]["strategy"]) == (
        "v1",
        None,
        "rolling",
    )
    status = client.get("/v1/apps/shop").json()
    assert status["app"] == "shop"
    assert [v["version"] for v in status["versions"]] == ["v1"]
    assert status["rollout"]["to"] == "v1"
    releases = client.get("/v1/apps/shop/releases").json()["releases"]
    assert releases[0]["spec"]["command"] == DEPLOY["command"]
    kinds = [e["kind"] for e in client.get("/v1/events", params={"app": "shop"}).json()["events"]]
    assert kinds == ["deploy"]
    # a second deploy while this one runs is refused, and changes nothing
    r = client.post("/v1/apps/shop/deploy", json={**DEPLOY, "version": "v2"}, headers=AUTH)
    assert r.status_code == 409
    assert "rollout in progress" in r.json()["error"]
    assert len(client.get("/v1/apps/shop/releases").json()["releases"]) == 1


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"health": {"path": "healthz"}}, 'release.health.path must start with "/"'),
        ({"strategy": "yolo"}, "rollout.strategy"),
        ({"instances": 0}, "rollout.instances"),
        ({"nonsense": 1}, "nonsense"),
        ({"command": "not a list"}, "command"),
    ],
)
def test_invalid_spec_is_a_4xx_naming_the_field_and_changes_nothing(
    client: httpx.Client, patch: dict[str, object], field: str
) -> None:
    r = client.post("/v1/apps/shop/deploy", json={**DEPLOY, **patch}, headers=AUTH)
    assert 400 <= r.status_code < 500
    assert field in r.json()["error"]
    assert client.get("/v1/apps").json() == {"apps": []}
    assert client.get("/v1/events").json() == {"events": []}
    assert client.get("/v1/routes").json()["apps"] == []


def test_bad_app_name_is_refused(client: httpx.Client) -> None:
    r = client.post("/v1/apps/sh%20op/deploy", json=DEPLOY, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"].startswith("app must be")


def test_pause_resume_abort_without_rollout_are_409(client: httpx.Client) -> None:
    assert client.post("/v1/apps/nope/pause", headers=AUTH).status_code == 404
    client.post("/v1/apps/shop/deploy", json=DEPLOY, headers=AUTH)
    assert client.post("/v1/apps/shop/resume", headers=AUTH).status_code == 409
    r = client.post("/v1/apps/shop/pause", headers=AUTH)
    assert r.status_code == 200 and r.json()["rollout"]["state"] == "paused"
    events = client.get("/v1/events").json()["events"]
    r = client.post("/v1/apps/shop/pause", headers=AUTH)  # idempotent
    assert r.status_code == 200 and client.get("/v1/events").json()["events"] == events
    r = client.post("/v1/apps/shop/resume", headers=AUTH)
    assert r.json()["rollout"]["state"] == "progressing"
    r = client.post("/v1/apps/shop/abort", headers=AUTH)
    assert r.json()["rollout"]["state"] == "aborted"
    assert client.post("/v1/apps/shop/abort", headers=AUTH).status_code == 409
    assert (
        client.post("/v1/apps/shop/rollback", headers=AUTH).status_code == 409
    )  # nothing before v1


def test_reports_register_hosts_and_routers(client: httpx.Client, clock: Clock) -> None:
    report = {"host_id": "h1", "slots": 3, "generation": 0, "instances": []}
    assert client.post("/v1/hosts/h1/report", json=report, headers=AUTH).status_code == 204
    hosts = client.get("/v1/hosts").json()["hosts"]
    assert [(h["id"], h["slots"], h["alive"]) for h in hosts] == [("h1", 3, True)]
    clock.now += 60
    assert client.get("/v1/hosts").json()["hosts"][0]["alive"] is False
    r = client.post("/v1/hosts/h1/report", json={**report, "host_id": "h2"}, headers=AUTH)
    assert r.status_code == 400 and "does not match" in r.json()["error"]
    r = client.post("/v1/hosts/h1/report", json={**report, "slots": "many"}, headers=AUTH)
    assert r.status_code == 400 and "slots" in r.json()["error"]
    router = {"router_id": "r1", "generation": 1, "time": 1.0, "apps": [], "instances": []}
    assert client.post("/v1/routers/r1/report", json=router, headers=AUTH).status_code == 204
    assert client.post("/v1/routers/r1/report", json={"apps": []}, headers=AUTH).status_code == 400


def test_watch_endpoints_answer_at_once_without_generation(client: httpx.Client) -> None:
    r = client.get("/v1/routes")
    assert r.status_code == 200 and r.json()["generation"] >= 1
    gen = r.json()["generation"]
    assert client.get("/v1/routes", params={"generation": gen, "wait": 0}).status_code == 204
    assert client.get("/v1/hosts/h9/desired").json() == {"generation": 0, "instances": []}
    assert (
        client.get("/v1/hosts/h9/desired", params={"generation": 0, "wait": 0}).status_code == 204
    )
    assert (
        client.get("/v1/routes", params={"generation": gen + 5, "wait": 0}).json()["generation"]
        == gen
    )


def test_openapi_lists_the_contract_paths(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/v1/routes",
        "/v1/routers/{router_id}/report",
        "/v1/hosts/{host_id}/desired",
        "/v1/hosts/{host_id}/report",
        "/v1/apps/{app}/deploy",
        "/v1/apps",
        "/v1/apps/{app}",
        "/v1/apps/{app}/pause",
        "/v1/apps/{app}/resume",
        "/v1/apps/{app}/abort",
        "/v1/apps/{app}/rollback",
        "/v1/events",
        "/v1/hosts",
        "/v1/apps/{app}/releases",
    ]:
        assert path in paths, path


def test_app_settings_persist_across_deploys_unless_given(client: httpx.Client) -> None:
    body = {**DEPLOY, "session": {"idle_timeout": 60}, "hosts": ["shop.example.com", "*.shop.test"]}
    assert client.post("/v1/apps/shop/deploy", json=body, headers=AUTH).status_code == 201
    client.post("/v1/apps/shop/abort", headers=AUTH)
    assert (
        client.post(
            "/v1/apps/shop/deploy", json={**DEPLOY, "version": "v2"}, headers=AUTH
        ).status_code
        == 201
    )
    (app,) = client.get("/v1/routes").json()["apps"]
    assert app["hosts"] == ["shop.example.com", "*.shop.test"]
    assert app["session"]["idle_timeout"] == 60.0
    client.post("/v1/apps/shop/abort", headers=AUTH)
    body = {**DEPLOY, "version": "v3", "session": {"idle_timeout": 5}}
    assert client.post("/v1/apps/shop/deploy", json=body, headers=AUTH).status_code == 201
    (app,) = client.get("/v1/routes").json()["apps"]
    assert app["session"]["idle_timeout"] == 5.0
    assert app["hosts"] == ["shop.example.com", "*.shop.test"]
    r = client.post("/v1/apps/cart/deploy", json={**DEPLOY, "hosts": ["bad host"]}, headers=AUTH)
    assert r.status_code == 400 and "hosts" in r.json()["error"]


def test_long_polls_wake_on_a_change(client: httpx.Client) -> None:
    import threading

    gen = client.get("/v1/routes").json()["generation"]
    got: dict[str, httpx.Response] = {}

    def poll(name: str, path: str, params: dict[str, object]) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            got[name] = c.get(path, params=params)

    threads = [
        threading.Thread(
            target=poll, args=("routes", "/v1/routes", {"generation": gen, "wait": 20})
        ),
        threading.Thread(target=poll, args=("events", "/v1/events", {"after": 0, "wait": 20})),
    ]
    for t in threads:
        t.start()
    # nothing has changed yet; if the polls are parked when the deploy lands, only a wake
    # makes them answer 200 before their 20 s are up (a broken wake answers 204)
    assert client.get("/v1/routes", params={"generation": gen, "wait": 0}).status_code == 204
    assert client.post("/v1/apps/shop/deploy", json=DEPLOY, headers=AUTH).status_code == 201
    for t in threads:
        t.join(30)
    assert got["routes"].status_code == 200
    assert got["routes"].json()["generation"] > gen
    assert [a["name"] for a in got["routes"].json()["apps"]] == ["shop"]
    assert [e["kind"] for e in got["events"].json()["events"]] == ["deploy"]
