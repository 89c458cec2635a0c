"""Key rotation during a release on a real fleet (``skewless up``: controller, router,
2 agents, real app instances), not only a router with a table file.

Sessions are pinned to v1 under k1, the fleet's first key. While active sessions browse,
the keys file of the fleet's router becomes ``k2`` then ``k1``, and v2 is deployed
side by side. Active sessions keep v1 from start to end. Their pins move to k2 as they
refresh. New sessions get v2 pins signed by k2. Once k1 is removed, sessions whose only
pin was signed by k1 are re-assigned by weight (v2, 200): not errors.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e.e2e_fleet import Fleet, running_fleet, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc"),
]

COOKIE = "skewless-shop"
IDLE = 10  # pins refresh once a second old: the rotation reaches active sessions fast
K2 = "k2:" + "2" * 64


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path, hosts=2, slots=2) as f:
        yield f


class User:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pin: str | None = None
        self.versions: list[str] = []
        self.failures: list[str] = []

    def visit(self, client: httpx.Client, url: str, *, keep: bool = True) -> str:
        client.cookies.clear()  # the pin is ours to send, not httpx's jar's
        headers = {"Cookie": f"{COOKIE}={self.pin}"} if self.pin else {}
        try:
            r = client.get(f"{url}/{self.name}", headers=headers)
        except httpx.HTTPError as exc:
            self.failures.append(repr(exc))
            return ""
        if r.status_code != 200:
            self.failures.append(f"{r.status_code} {r.text[:80]}")
            return ""
        served = r.headers.get("x-app-version") or ""
        self.versions.append(served)
        m = re.search(COOKIE + r"=([^;]*)", r.headers.get("set-cookie", ""))
        if m and keep:
            self.pin = m.group(1)
        return served

    def key(self) -> str | None:
        return self.pin.split(".")[1] if self.pin else None


def test_rotating_keys_during_a_fleet_release_loses_no_pin(fleet: Fleet) -> None:
    keys_file = fleet.state / "keys.txt"
    k1 = keys_file.read_text().strip().splitlines()[0]
    assert k1.startswith("k1:")
    common = ["--instances", "2", "--strategy", "side-by-side"]
    first = fleet.deploy("shop", "v1", *common, "--session-idle-timeout", str(IDLE))
    assert first.returncode == 0, first.stdout + first.stderr
    url = fleet.http
    active = [User(f"a{i}") for i in range(6)]
    dormant = [User(f"d{i}") for i in range(6)]
    probe = User("probe")
    with httpx.Client(timeout=10) as client:
        for u in [*active, *dormant, probe]:
            assert u.visit(client, url) == "v1", u.failures
            assert u.key() == "k1"
        stop = threading.Event()

        def browse() -> None:
            with httpx.Client(timeout=10) as own:
                deadline = time.monotonic() + 150  # bounded even if the test body fails
                while not stop.is_set() and time.monotonic() < deadline:
                    for u in active:
                        u.visit(own, url)
                    time.sleep(0.05)  # think time between pages, not a wait for a timer

        browser = threading.Thread(target=browse, daemon=True)
        browser.start()
        try:
            tmp = keys_file.with_suffix(".new")
            tmp.write_text(f"{K2}\n{k1}\n")
            os.replace(tmp, keys_file)
            second = fleet.deploy(
                "shop", "v2", *common, "--session-idle-timeout", str(IDLE), wait=False
            )
            assert second.returncode == 0, second.stdout + second.stderr

            def newcomer_on_v2_k2() -> bool:
                u = User("n")
                return u.visit(client, url) == "v2" and u.key() == "k2"

            wait_for("v2 to take new sessions under k2", newcomer_on_v2_k2, timeout=90)
            for u in dormant:  # still valid under k1, still v1
                assert u.visit(client, url, keep=False) == "v1", (u.name, u.failures)
            wait_for(
                "active pins re-issued under k2",
                lambda: all(u.key() == "k2" for u in active),
                timeout=30,
            )
            tmp.write_text(f"{K2}\n")
            os.replace(tmp, keys_file)
            # The probe's k1 pin is re-assigned by weight once k1 is gone.
            wait_for("k1 to be removed", lambda: probe.visit(client, url, keep=False) == "v2", 30)
            seen = sum(len(u.versions) for u in active)
            wait_for(
                "active sessions to browse on after k1 is gone",
                lambda: sum(len(u.versions) for u in active) > seen + 2 * len(active),
                timeout=30,
            )
        finally:
            stop.set()
            browser.join(30)
        assert not browser.is_alive()
        for u in active:
            assert not u.failures, (u.name, u.failures)
            assert set(u.versions) == {"v1"}, (u.name, u.versions)  # 0 pins lost
        for u in dormant:  # signed only by the removed key: re-assigned, not an error
            assert u.visit(client, url) == "v2", (u.name, u.failures)
            assert u.key() == "k2"
        assert not probe.failures, probe.failures
    total = sum(len(u.versions) for u in active)
    print(f"active sessions: {total} requests, all on v1, across the release and rotation")
    assert total > 30, total  # the loop really ran through the rotation
