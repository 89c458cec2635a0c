"""Schemathesis against a real ``skewless controller`` process on 127.0.0.1.

For every operation of the controller's own OpenAPI document, Schemathesis generates
requests (valid ones and, for operations with inputs, invalid ones) and sends them over
real HTTP. Each request is sent three ways:

- without a token: a mutating call (POST) is refused with 401 and the store is
  byte-for-byte what it was (every row of every table); a GET from loopback is served;
- with a wrong token: the same;
- with the token: never a 5xx; a call the controller rejects (4xx) leaves the store as it
  was, and its answer is ``{"error": "..."}``.

The controller runs a planner that never acts (``test_control_procs:plan``), so the only
writer of the store is the API under test and two snapshots can be compared exactly.
Long-polls are asked with ``wait=0`` (the fuzzer would otherwise wait up to 60 s a call).
Bounded: ``MAX_EXAMPLES`` per operation and mode, about 30 s on this machine.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_control_procs import TOKEN, Controller

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("SKEWLESS_FUZZ_EXAMPLES", "25"))
"""Per operation; ``SKEWLESS_FUZZ_EXAMPLES=300`` for a longer run by hand."""
LONG_POLLS = ("/v1/routes", "/v1/hosts/{host_id}/desired", "/v1/events")


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("fuzz"), quiet_planner=True)
    try:
        yield c
    finally:
        c.stop()


def _operations(spec: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(spec)
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def _send(client: httpx.Client, case: Any, headers: dict[str, str]) -> httpx.Response:
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url), headers=headers)
    query = dict(kwargs.get("params") or {})
    if case.operation.path in LONG_POLLS:
        query["wait"] = "0"  # absent, a long-poll waits 25 s
    return client.request(
        kwargs["method"],
        kwargs["url"],
        params=query,
        headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
        content=kwargs.get("data") if "json" not in kwargs else None,
        json=kwargs.get("json"),
        timeout=15,
    )


class Fuzz:
    """One controller, one HTTP client, and what the fuzzer saw."""

    def __init__(self, controller: Controller, client: httpx.Client) -> None:
        self.controller = controller
        self.client = client
        self.seen: dict[str, set[int]] = {}
        self.server_errors: list[str] = []

    def check(self, case: Any, label: str, mutating: bool) -> None:
        before = self.controller.dump()
        for bad in ({}, {"Authorization": "Bearer wrong-" + TOKEN}):
            r = _send(self.client, case, bad)
            if mutating:
                assert r.status_code == 401, (label, bad, r.status_code, r.text)
                assert "token" in r.json()["error"]
                assert self.controller.dump() == before, (
                    f"{label} without the token changed the store"
                )
            else:
                assert r.status_code < 500, (label, r.status_code, r.text)
        r = _send(self.client, case, {"Authorization": f"Bearer {TOKEN}"})
        self.seen.setdefault(label, set()).add(r.status_code)
        if mutating and r.status_code < 400:
            self.quiet()
        if r.status_code >= 500:
            self.server_errors.append(f"{label} -> {r.status_code}: {case.as_curl_command()}")
            return
        if 400 <= r.status_code < 500:
            body = r.json()
            assert isinstance(body.get("error"), str) and body["error"], (label, body)
            assert self.controller.dump() == before, (
                f"{label} was rejected ({r.status_code}) but changed the store: {r.text}"
            )

    def quiet(self) -> None:
        """After an accepted call the engine writes too (a rollout starts, an event):
        wait until two dumps a few engine ticks apart agree."""
        deadline = time.monotonic() + 10
        last = self.controller.dump()
        while True:
            time.sleep(0.5)  # 2.5 engine ticks: the engine is woken at once by the call
            now = self.controller.dump()
            if now == last:
                return
            assert time.monotonic() < deadline, "the store keeps changing"
            last = now

    def run(self, op: Any) -> None:
        label = f"{op.method.upper()} {op.path}"
        mutating = op.method.upper() not in ("GET", "HEAD")
        strategy = st.one_of(
            op.as_strategy(generation_mode=GenerationMode.POSITIVE),
            op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def examples(case: Any) -> None:
            self.check(case, label, mutating)

        examples()


def test_fuzzed_controller_api_never_5xx_and_rejected_calls_change_nothing(
    controller: Controller,
) -> None:
    spec = httpx.get(f"{controller.url}/openapi.json", timeout=10).json()
    operations = _operations(spec)
    assert len(operations) >= 12, [o.path for o in operations]
    with httpx.Client(base_url=controller.url) as client:
        fuzz = Fuzz(controller, client)
        for op in operations:
            started = time.monotonic()
            fuzz.run(op)
            print(f"{op.method.upper()} {op.path}: {time.monotonic() - started:.1f} s")
    assert not fuzz.server_errors, "5xx answers:\n" + "\n".join(fuzz.server_errors[:10])
    # The fuzzer reached the interesting answers, not only 400s.
    deploys = fuzz.seen.get("POST /v1/apps/{app}/deploy", set())
    assert any(200 <= s < 300 for s in deploys), fuzz.seen
    assert 400 in deploys, fuzz.seen
