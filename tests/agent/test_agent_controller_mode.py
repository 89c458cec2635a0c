"""``--controller`` mode against a small fake controller: a real HTTP server on 127.0.0.1
that speaks the BRIEF's host endpoints (long-poll desired state, agent reports)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

TOKEN = "tok-123"


class FakeController:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.desired: dict[str, Any] = {"generation": 0, "instances": []}
        self.reports: list[dict[str, Any]] = []
        self.auth: set[str] = set()
        self.closing = False

    def set_desired(self, doc: dict[str, Any]) -> None:
        with self.cond:
            self.desired = doc
            self.cond.notify_all()

    def latest(self) -> dict[str, Any] | None:
        with self.cond:
            return self.reports[-1] if self.reports else None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: object = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/v1/hosts/h1/desired":
                    return self._send(404, {"error": "unknown path"})
                query = parse_qs(url.query)
                known = query.get("generation", [None])[0]
                wait = min(float(query.get("wait", ["25"])[0]), 60.0)
                deadline = time.monotonic() + wait
                with fake.cond:
                    while (
                        known is not None
                        and str(fake.desired.get("generation")) == known
                        and not fake.closing
                        and time.monotonic() < deadline
                    ):
                        fake.cond.wait(max(0.0, deadline - time.monotonic()))
                    doc = fake.desired
                if known is not None and str(doc.get("generation")) == known:
                    return self._send(204)
                return self._send(200, doc)

            def do_POST(self) -> None:
                if self.path != "/v1/hosts/h1/report":
                    return self._send(404, {"error": "unknown path"})
                given = self.headers.get("Authorization", "")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.cond:
                    fake.auth.add(given)
                    if given != f"Bearer {TOKEN}":
                        return self._send(401, {"error": "token"})
                    fake.reports.append(body)
                self._send(204)

        return Handler


@pytest.fixture
def controller() -> Iterator[tuple[FakeController, str]]:
    fake = FakeController()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        with fake.cond:
            fake.closing = True
            fake.cond.notify_all()
        server.shutdown()
        server.server_close()
        thread.join()


def test_controller_mode_follows_desired_and_reports(agent: Any, controller: Any) -> None:
    fake, url = controller
    spec = agent.instance(0, "v1")
    fake.set_desired({"generation": 1, "instances": [spec]})
    agent.start("--token", TOKEN, "--report-interval", "0.5", source=("--controller", url))

    def reported(gen: int, state: str) -> dict[str, Any] | None:
        rep = fake.latest()
        if not rep or rep["generation"] != gen:
            return None
        rows = {i["id"]: i for i in rep["instances"]}
        row = rows.get(spec["id"])
        return row if row and row["state"] == state else None

    ready = agent.wait_for("a report of the ready instance", lambda: reported(1, "ready"))
    report = fake.latest()
    assert report["host_id"] == "h1" and report["slots"] == 4
    assert ready["version"] == "v1" and ready["pid"] in agent.pids("v1/0")
    assert ready["health"]["ok"] is True
    assert fake.auth == {f"Bearer {TOKEN}"}
    assert agent.status()["controller_error"] is None

    fake.set_desired({"generation": 2, "instances": [dict(spec, desired="stopped")]})
    agent.wait_for("a report of the stopped instance", lambda: reported(2, "stopped"))
    assert agent.pids() == []

    fake.set_desired({"generation": 3, "instances": [{"id": "x"}]})
    agent.wait_for(
        "the invalid state to be reported",
        lambda: (r := fake.latest()) and r["desired_error"] and r["generation"] == 2 and r,
    )
    assert "instances[0].app must be" in fake.latest()["desired_error"]
